"""The daemon: sockets, the request loop, start-up, signals and shutdown.

One asyncio loop owns the ZeroMQ sockets. Every request runs as its own task, so a long
load or generation never delays a `status`; model work runs in the engines' processes.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
from mgpud.ipc import framing, paths
from mgpud.ipc.client import AsyncClient, probe_socket
from mgpud.ipc.errors import INTERNAL, DaemonUnavailable, MgpudError
from mgpud.ipc.framing import RequestId
from mgpud.ipc.schema import BadRequest, Request
from mgpud.ipc.trust import UnsafePath, take_dir

from mgpud import __version__
from mgpud.records import DaemonSummary, to_wire

from . import memory
from .door import Door
from .eventlog import log_event
from .generation import Call
from .handlers import HANDLERS
from .journal import setup_logging
from .manager import ModelManager
from .notify import Notifier, watchdog_interval
from .peers import Peers
from .settings import ConfigError, DaemonConfig, load_config, state_dir
from .statefile import StateStore
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .web.listener import Listener

log = logging.getLogger(__name__)

SEND_HWM = 100_000  # messages queued per client before frames to it are dropped
EXTEND_EVERY = 5.0  # seconds between EXTEND_TIMEOUT_USEC messages during start-up loads
SUN_PATH_MAX = 107  # bytes in a Unix socket path, NUL excluded


class StartError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.runtime_dir = paths.runtime_dir(config.runtime_dir)
        self.control_path = paths.control_path(self.runtime_dir)
        self.events_path = paths.events_path(self.runtime_dir)
        self.store = StateStore(state_dir(config))
        self.notifier = Notifier()
        self.started_at = time.time()
        self.phase = "starting"  # starting, loading, running, stopping
        self.counters: Counter[str] = Counter()
        self.calls: dict[tuple[bytes, RequestId], Call] = {}  # running requests by (client, id)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stop_timeout = config.shutdown_timeout
        self._stopped: asyncio.Event | None = None
        self._lock_fd: int | None = None
        self.http: Listener | None = None  # the HTTP API, unless configured off

    # -- life cycle -----------------------------------------------------------------------

    async def run(self) -> int:
        from mgpud.engine.hosts.inventory import DeviceSpecError, discover

        try:
            inventory = discover(self.config.devices, self.config.device_memory)
        except DeviceSpecError as exc:
            log.error("%s", exc)
            return 2
        self.telemetry = Telemetry(inventory, self.config.telemetry_interval)
        self.models = ModelManager(inventory, self.store, self._on_model_event, lambda: self.config.engine,
                                   lambda: self.telemetry.devices, lambda: self.config.model_roots,
                                   self.config.warm_workers)
        self._stopped = asyncio.Event()
        try:
            await self._take_runtime_dir()
            self._open_sockets()
            self.http = self._listen_http()
        except StartError as exc:
            log.error("%s", exc)
            return 1
        try:
            return await self._serve()
        finally:
            self._close_sockets()

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        receiver = self.spawn(self._receive())
        self.spawn(self.peers.watch())
        self.spawn(self._publish_telemetry())
        self.spawn(self._watchdog(receiver))
        async with AsyncClient(self.runtime_dir, timeout=10.0) as client:
            await client.call("ping")  # the socket answers: clients can connect from now on
        log.info("listening on %s (events on %s)", self.control_path, self.events_path)
        if self.http is not None:
            await self.http.import_web()
            from .web.app import build_app

            self.http.serve(build_app(self))
            log.info("HTTP API on %s%s", self.http.url, " (API key required)" if self.config.api_key else "")
        await self._start_models()
        if not self._stopped.is_set():
            self.phase = "running"
            self.notifier.ready(self.status_line())
            self.publish("event", {"kind": "daemon_ready"})
        await self._stopped.wait()
        await self._shutdown()
        return 0

    async def _start_models(self) -> None:
        """Bring back the state file's models, then the config's others, before READY=1."""
        saved = self.store.load()
        if not saved and not self.config.models:
            return
        self.phase = "loading"
        loading = self.spawn(self._restore(saved), name="restore")
        stopped = self.spawn(self._stopped.wait(), name="stopped")
        while not loading.done() and not stopped.done():
            self.notifier.extend_timeout(3 * EXTEND_EVERY)
            self.notifier.status(f"loading models: {self.status_line()}")
            await asyncio.wait([loading, stopped], timeout=EXTEND_EVERY, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()

    async def _restore(self, saved: list[dict[str, Any]]) -> None:
        await self.models.restore(saved, persist=True)
        await self.models.restore(self.config.models, persist=False)

    def stop(self, timeout: float | None = None) -> None:
        """Begin a graceful stop (SIGTERM, SIGINT, the shutdown operation); a second
        request while stopping cancels the generations still running."""
        assert self._stopped is not None
        if self._stopped.is_set():
            log.warning("stop requested again: cancelling running generations")
            self.models.cancel_all()
            return
        if timeout is not None:
            self.stop_timeout = timeout
        self.phase = "stopping"
        self.models.accepting = False
        self.notifier.stopping()
        self.publish("event", {"kind": "daemon_stopping", "timeout": self.stop_timeout})
        self._stopped.set()

    async def _shutdown(self) -> None:
        log.info("stopping: giving running generations %.0f s", self.stop_timeout)
        await self.models.shutdown(self.stop_timeout)
        if self.http is not None:
            await self.http.stop()
        # Requests still in flight are answered (shutting_down) before the sockets close.
        pending = [t for t in self._tasks if t.get_name().startswith("request")]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("stopped")

    def reload(self) -> None:
        """SIGHUP: read the config again; apply what can change live, load new models."""
        self.notifier.reloading()
        try:
            fresh = load_config(self.config.config_path, self.config.overrides)
        except ConfigError as exc:
            log.error("reload failed, keeping the current configuration: %s", exc)
        else:
            for key in ("runtime_dir", "state_dir", "devices", "device_memory", "http"):
                if getattr(fresh, key) != getattr(self.config, key):
                    log.warning("reload: %s changed; it takes effect at the next restart", key)
                    setattr(fresh, key, getattr(self.config, key))
            self.config = fresh
            if self.phase != "stopping":
                self.stop_timeout = fresh.shutdown_timeout
            logging.getLogger().setLevel(fresh.log_level.upper())
            self.spawn(self.models.restore(fresh.models, persist=False))
            log.info("configuration reloaded from %s", fresh.config_path or "flags")
            self.publish("event", {"kind": "config_reloaded", "path": str(fresh.config_path or "")})
        if self.phase == "running":
            self.notifier.ready(self.status_line())

    # -- runtime directory and sockets ----------------------------------------------------

    def _listen_http(self) -> Listener | None:
        """Bind the HTTP API's address now (a taken port stops the start); served once the
        control socket answers."""
        if self.config.http is None:
            return None
        from .web.listener import Listener

        try:
            return Listener(*self.config.http)
        except OSError as exc:
            raise StartError(exc.strerror or str(exc)) from None

    async def _take_runtime_dir(self) -> None:
        if len(str(self.control_path).encode()) > SUN_PATH_MAX:
            raise StartError(f"the runtime directory {self.runtime_dir} is too long for a Unix socket "
                             f"path ({SUN_PATH_MAX} bytes at most); choose a shorter --runtime-dir")
        lock_path = self.runtime_dir / "mgpud.lock"
        try:
            self._take_dirs()
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        except UnsafePath as exc:
            raise StartError(str(exc)) from None
        except OSError as exc:
            raise StartError(f"cannot use the runtime directory {self.runtime_dir}: {exc.strerror}; "
                             "choose another with --runtime-dir or $MGPUD_RUNTIME_DIR") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise StartError(f"another mgpud holds {lock_path}{await self._other_daemon()}; "
                             "stop it first (`systemctl stop mgpud` or `mgpud shutdown`)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        for path in (self.control_path, self.events_path):
            if path.exists():
                _check_stale(path)
                log.info("removing the stale socket %s left by a daemon that is gone", path)
                path.unlink()

    def _take_dirs(self) -> None:
        """Create the runtime and state directories, or check those there (UnsafePath): a user
        who may write into them could take the control socket or rewrite the state file."""
        private = self.runtime_dir == paths.fallback_dir()
        take_dir(self.runtime_dir, "runtime directory", "--runtime-dir", 0o770, private)
        take_dir(self.store.path.parent, "state directory", "--state-dir", 0o700)

    async def _other_daemon(self) -> str:
        """Who holds the runtime directory, for the error message."""
        try:
            probe_socket(self.control_path)
            async with AsyncClient(self.runtime_dir, timeout=2.0) as client:
                pong = await client.call("ping")
            return f" (pid {pong.get('pid')} answers on {self.control_path})"
        except (DaemonUnavailable, MgpudError):
            return " (it does not answer yet: starting, or stuck)"

    def _open_sockets(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.MAXMSGSIZE, framing.MAX_REQUEST_BYTES)
        self.control.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.control.setsockopt(zmq.LINGER, 1000)
        self.events = self.ctx.socket(zmq.PUB)
        self.events.setsockopt(zmq.LINGER, 0)
        self.peers = Peers(self.control, self._client_gone)
        self.door = Door(self._admit, lambda coro, name: self.spawn(coro, name=name))
        try:
            self.control.bind(paths.endpoint(self.control_path))
            self.events.bind(paths.endpoint(self.events_path))
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise StartError(f"cannot listen in {self.runtime_dir}: {exc}") from None

    def _close_sockets(self) -> None:
        self.door.close()
        self.peers.close()
        self.control.close()
        self.events.close()
        self.ctx.term()
        for path in (self.control_path, self.events_path):
            path.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    # -- requests -------------------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            message = await self.control.recv_multipart(copy=False)
            try:
                self.peers.seen(message[0].bytes, message[-1])
                self._dispatch([frame.bytes for frame in message])
            except Exception:  # a bug here must cost one message, never the loop
                log.exception("dispatching a message failed")
                self.counters[f"error:{INTERNAL}"] += 1

    def _dispatch(self, frames: list[bytes]) -> None:
        envelope, payload = frames[:-1], frames[-1]
        # DEALER clients send [payload]; REQ clients [b"", payload]; ROUTER adds the identity.
        if len(envelope) > 2 or (len(envelope) == 2 and envelope[1]):
            self._refuse(frames[:1], BadRequest("a request is a single frame holding one msgpack map"))
            return
        self.door.enter(envelope, payload)

    def _admit(self, envelope: list[bytes], req: Request | BadRequest) -> None:
        """Start a request the door parsed, in the order its client sent it."""
        if isinstance(req, BadRequest):
            self._refuse(envelope, req)
            return
        key = (envelope[0], req.id)
        if key in self.calls:
            self._refuse(envelope, BadRequest(f"id {req.id!r} is in use by a running request", req.id))
            return
        call = Call(envelope[0], req.op, lambda data: self.send(envelope, framing.frame(req.id, data)))
        self.calls[key] = call
        self.spawn(self._answer(envelope, key, req, call), name=f"request {req.op}")

    def _client_gone(self, client: bytes) -> None:
        for (who, _), call in list(self.calls.items()):
            if who == client:
                call.cancel()

    def _refuse(self, envelope: list[bytes], exc: BadRequest) -> None:
        # Refused at the door, before any operation ran: malformed, and an error reply like any other.
        self.counters["malformed"] += 1
        self.counters[f"error:{exc.code}"] += 1
        self.send(envelope, framing.error(exc.req_id, exc.code, exc.message))

    async def _answer(self, envelope: list[bytes], key: tuple[bytes, RequestId], req: Request, call: Call) -> None:
        self.counters[f"op:{req.op}"] += 1
        try:
            reply = framing.ok(req.id, await HANDLERS[req.op](self, req, call))
        except MgpudError as exc:
            self.counters[f"error:{exc.code}"] += 1
            reply = framing.error(req.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("%s failed", req.op)
            self.counters[f"error:{INTERNAL}"] += 1
            reply = framing.error(req.id, INTERNAL, f"{req.op} failed: {type(exc).__name__}: {exc}")
        finally:
            del self.calls[key]
        self.send(envelope, reply)

    def send(self, envelope: list[bytes], data: bytes) -> None:
        """Send without waiting: a ROUTER drops what a full or vanished client cannot take."""
        sent = self.control.send_multipart([*envelope, data], flags=zmq.NOBLOCK)
        if sent.exception() is not None:
            self.counters["dropped"] += 1

    def _on_model_event(self, event: dict[str, Any]) -> None:
        self.publish("event", event)
        if self.phase == "running" and event["kind"] != "model_progress":
            self.notifier.status(self.status_line())

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        if topic == "event":
            log_event(data)
        sent = self.events.send_multipart(framing.event(topic, data, time.time()), flags=zmq.NOBLOCK)
        sent.exception()  # a PUB socket drops rather than fail; nothing to report

    # -- background tasks -----------------------------------------------------------------

    def spawn(self, coro: Any, name: str = "task") -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _publish_telemetry(self) -> None:
        while True:
            try:
                models = self.models.describe_all()
                await self.telemetry.refresh(models)
                self.publish("telemetry", {"daemon": self.summary(),
                                           "devices": [to_wire(d) for d in self.telemetry.device_rows(models)],
                                           "models": [to_wire(m) for m in self.telemetry.advised(models)]})
            except Exception:
                log.exception("telemetry failed")
            await asyncio.sleep(self.config.telemetry_interval)

    async def _watchdog(self, receiver: asyncio.Task[None]) -> None:
        """WATCHDOG=1 while the loop runs and still receives requests."""
        interval = watchdog_interval()
        if interval is None:
            return
        while not receiver.done():
            self.notifier.watchdog()
            await asyncio.sleep(interval)
        log.error("the request receiver stopped; withholding the watchdog so systemd restarts us")

    # -- descriptions -----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return to_wire(DaemonSummary(
            version=__version__, protocol=framing.PROTOCOL_VERSION, pid=os.getpid(), state=self.phase,
            started_at=self.started_at, uptime_s=round(time.time() - self.started_at, 3),
            generations_running=sum(m.running for m in self.models.models.values())))

    def status_line(self) -> str:
        models = self.models.models.values()
        ready = sum(m.state == "ready" for m in models)
        loading = [m for m in models if m.state == "loading"]
        running = sum(m.running for m in models)
        text = f"{ready} model(s) ready, {running} generation(s) running"
        if loading and loading[0].progress:
            p = loading[0].progress
            text += f"; loading {loading[0].name}: {p.phase} {p.message}".rstrip()
        return text


def _check_stale(path: Path) -> None:
    """Raise StartError when something still listens on `path` (its lock file removed?)."""
    try:
        probe_socket(path)
    except DaemonUnavailable:
        return
    raise StartError(f"a process listens on {path} without holding the runtime directory's lock; "
                     "stop it first (`mgpud shutdown`)")


def run_daemon(config: DaemonConfig) -> int:
    """Run the daemon in the foreground until SIGTERM or a shutdown request; the exit code."""
    setup_logging(config.log_level)
    memory.fix_thresholds()
    os.umask(0o007)  # sockets and files group-accessible only: the mgpud group controls the daemon
    return asyncio.run(Daemon(config).run())
