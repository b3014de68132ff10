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


class ProtocolError(MgpudError):
    """A reply that does not follow the protocol (another program on the socket?)."""

    def __init__(self, message: str) -> None:
        super().__init__(INTERNAL, message)


class DaemonUnavailable(MgpudError):
    """No daemon answers on the control socket."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(
            NO_DAEMON,
            f"no daemon at {socket_path} ({reason}): start it with "
            "`systemctl start mgpud` or `mgpud serve`",
        )
        self.socket_path = socket_path
        self.reason = reason
