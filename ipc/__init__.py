"""The control protocol of mgpud: paths, framing, schemas and clients (no torch here)."""

from .client import AsyncClient, AsyncStream, Client, Stream
from .errors import BadRequest, DaemonUnavailable, MgpudError, ProtocolError, RemoteError
from .framing import PROTOCOL_VERSION
from .paths import control_path, events_path, runtime_dir
from .schema import OPS

__all__ = [
    "OPS",
    "PROTOCOL_VERSION",
    "AsyncClient",
    "AsyncStream",
    "BadRequest",
    "Client",
    "DaemonUnavailable",
    "MgpudError",
    "ProtocolError",
    "RemoteError",
    "Stream",
    "control_path",
    "events_path",
    "runtime_dir",
]
