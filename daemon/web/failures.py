"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the
HTTP status a client library maps to its exception types."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from mgpud.ipc import errors as codes

# control-protocol error code -> (HTTP status, OpenAI error type)
_STATUS = {
    codes.BAD_REQUEST: (400, "invalid_request_error"),
    codes.INVALID_REQUEST: (400, "invalid_request_error"),
    codes.NOT_FOUND: (404, "not_found_error"),
    codes.BUSY: (503, "service_unavailable"),
    codes.UNAVAILABLE: (503, "service_unavailable"),
    codes.SHUTTING_DOWN: (503, "service_unavailable"),
    codes.REPLICA_FAILED: (503, "service_unavailable"),
    codes.INTERNAL: (500, "internal_error"),
}


class ApiError(Exception):
    """An error to answer with: its status, OpenAI type, message, the parameter at fault."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.param, self.code = status, kind, message, param, code

    @classmethod
    def from_code(cls, code: str, message: str, param: str | None = None) -> ApiError:
        status, kind = _STATUS.get(code, (500, "internal_error"))
        return cls(status, kind, message, param, code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request_error", message, param, codes.BAD_REQUEST)
