"""msgpack framing of the control protocol (see docs/protocol.md).

Every message is one msgpack map in one ZeroMQ frame. A request carries the protocol
version `v`, a request `id` chosen by the client, an `op` and its `args`. The daemon
answers with maps that echo the `id` and carry a `type`: zero or more `"frame"`
messages (progress, tokens), then exactly one `"result"` or `"error"`.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import ProtocolError, from_reply

PROTOCOL_VERSION = 1

# Requests are small (a prompt, a few numbers); replies may carry long texts and tables.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_REPLY_BYTES = 64 * 1024 * 1024

FRAME = "frame"
RESULT = "result"
ERROR = "error"

RequestId = str | int


def speaks_our_version(v: Any) -> bool:
    """Whether a message's `v` is this protocol's: an int, so that neither true nor 1.0
    passes for 1 (both compare equal to it in Python)."""
    return type(v) is int and v == PROTOCOL_VERSION


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """Decode one msgpack object; raises ValueError for anything that is not exactly one."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except msgpack.StackError:
        raise ValueError("not a msgpack object: nested too deeply") from None
    except Exception as exc:  # msgpack raises a zoo of types for hostile input
        raise ValueError(f"not a msgpack object: {exc.__class__.__name__}: {exc}") from None


def request(req_id: RequestId, op: str, args: dict[str, Any]) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": req_id, "op": op, "args": args})


def ok(req_id: RequestId | None, result: dict[str, Any]) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": req_id, "type": RESULT, "result": result})


def error(req_id: RequestId | None, code: str, message: str) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": req_id, "type": ERROR,
                 "error": {"code": code, "message": message}})


def frame(req_id: RequestId, data: dict[str, Any]) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": req_id, "type": FRAME, "frame": data})


def event(topic: str, data: dict[str, Any], time: float) -> list[bytes]:
    """An events-socket message: the topic frame (for prefix subscription), then the map."""
    return [topic.encode(), pack({"v": PROTOCOL_VERSION, "topic": topic, "time": time, "data": data})]


def parse_reply(data: bytes) -> dict[str, Any]:
    """Decode a daemon message and check its shape; raises ProtocolError."""
    try:
        msg = unpack(data)
    except ValueError as exc:
        raise ProtocolError(f"undecodable reply from the daemon: {exc}") from None
    if not isinstance(msg, dict) or msg.get("type") not in (FRAME, RESULT, ERROR):
        raise ProtocolError(f"reply without a valid type: {msg!r:.200}")
    if not speaks_our_version(msg.get("v")):
        raise ProtocolError(f"daemon speaks protocol {msg.get('v')!r}, this client {PROTOCOL_VERSION}")
    if not isinstance(msg.get("id"), (str, int, type(None))):
        raise ProtocolError(f"reply with an invalid id: {msg.get('id')!r:.100}")
    return msg


def reply_payload(msg: dict[str, Any]) -> dict[str, Any]:
    """The frame or result of a parsed reply; an error reply raises RemoteError
    (`bad_request`: RefusedRequest, which is also a BadRequest)."""
    if msg["type"] == ERROR:
        err = msg.get("error") or {}
        raise from_reply(str(err.get("code", "internal")), str(err.get("message", "")), msg.get("id"))
    return msg.get(msg["type"]) or {}


def parse_event(frames: list[bytes]) -> dict[str, Any]:
    if len(frames) != 2:
        raise ProtocolError(f"event with {len(frames)} frames, expected 2")
    try:
        msg = unpack(frames[1])
    except ValueError as exc:
        raise ProtocolError(f"undecodable event: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("data"), dict):
        raise ProtocolError(f"event without data: {msg!r:.200}")
    return msg
