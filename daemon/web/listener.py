"""uvicorn serving the HTTP app inside the daemon's own event loop: a request's handler
awaits the model manager directly, with no thread hop and no second loop.

The address is bound when the daemon starts (a taken or wrong address stops the start with
a clear error); the web stack (FastAPI, pydantic, uvicorn: longer to import than the rest
of the daemon) is imported once the control socket answers, in a thread, and the app is
served from then on. Connections made before that wait in the socket's backlog."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

log = logging.getLogger(__name__)
GRACE = 5.0  # seconds open connections get to finish when the daemon stops
WEB_MODULES = ("uvicorn", "fastapi", "mgpud.daemon.web.app")


class Listener:
    """The bound socket and, once `serve` is called, the uvicorn server on it."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = _bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def import_web(self) -> None:
        """Import the web stack in a thread: the event loop keeps answering meanwhile."""
        await asyncio.to_thread(lambda: [importlib.import_module(m) for m in WEB_MODULES])

    def serve(self, app: FastAPI) -> None:
        import uvicorn

        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=GRACE)
        self._server = uvicorn.Server(config)
        # The daemon owns SIGTERM/SIGINT/SIGHUP; uvicorn must not take them over.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self.sock]), name="http")

    async def stop(self) -> None:
        if self._server is None:
            self.sock.close()
            return
        self._server.should_exit = True
        if self._task is not None:
            await self._task


def _bind(host: str, port: int) -> socket.socket:
    """Bind now, so that a taken or wrong address stops the start with a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} for HTTP: {exc.strerror}; "
                      "choose another address with --http HOST:PORT, or --http off") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock
