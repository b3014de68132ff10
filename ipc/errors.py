"""Error codes of the control protocol and the exceptions clients raise.

A code is part of the protocol and never changes meaning; the message is for a human
and may be reworded at any time.
"""

from __future__ import annotations

BAD_REQUEST = "bad_request"  # malformed message, unknown op, wrong or missing argument
NOT_FOUND = "not_found"  # no model (or request) by that name
ALREADY_EXISTS = "already_exists"  # a model by that name is already loaded or loading
BUSY = "busy"  # not enough free devices, or the model is loading / unloading
UNAVAILABLE = "unavailable"  # the operation is not supported by this build or host
SHUTTING_DOWN = "shutting_down"  # the daemon is stopping and takes no new work
LOAD_FAILED = "load_failed"  # the engine refused or failed to load the model
INVALID_REQUEST = "invalid_request"  # the engine refused the generation (too long, bad params)
REPLICA_FAILED = "replica_failed"  # a worker died while serving the request
INTERNAL = "internal"  # a bug in the daemon; the message says what failed

# Raised by clients only, never sent: nothing answers on the control socket.
NO_DAEMON = "no_daemon"

CODES = (BAD_REQUEST, NOT_FOUND, ALREADY_EXISTS, BUSY, UNAVAILABLE, SHUTTING_DOWN,
         LOAD_FAILED, INVALID_REQUEST, REPLICA_FAILED, INTERNAL)


class MgpudError(Exception):
    """An error with a stable protocol code and a message for a human."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class RemoteError(MgpudError):
    """The daemon answered a request with an error reply."""


class BadRequest(MgpudError):
    """A request that does not follow the protocol; `req_id` is set when it could be read.

    The daemon raises it at its door (mgpud.ipc.schema.parse_request) and answers with a
    `bad_request` error reply; clients raise that reply as RefusedRequest, a subclass."""

    def __init__(self, message: str, req_id: str | int | None = None) -> None:
        super().__init__(BAD_REQUEST, message)
        self.req_id = req_id


class RefusedRequest(BadRequest, RemoteError):
    """The daemon's `bad_request` reply: the BadRequest its validation raised, with the same
    message, and also a RemoteError like every other error reply."""


def from_reply(code: str, message: str, req_id: str | int | None = None) -> RemoteError:
    """The exception a client raises for an error reply."""
    if code == BAD_REQUEST:
        return RefusedRequest(message, req_id)
    return RemoteError(code, message)


class ProtocolError(MgpudError):
    """A reply that does not follow the protocol (another program on the socket?)."""

    def __init__(self, message: str) -> None:
        super().__init__(INTERNAL, message)


START_DAEMON = "start it with `systemctl start mgpud` or `mgpud serve`"


class DaemonUnavailable(MgpudError):
    """No daemon answers on the control socket (or none this client may trust): why, and the fix."""

    def __init__(self, socket_path: str, reason: str, fix: str = START_DAEMON) -> None:
        super().__init__(NO_DAEMON, f"no daemon at {socket_path} ({reason}): {fix}")
        self.socket_path = socket_path
        self.reason = reason
