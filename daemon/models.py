"""The model manager: loads, serves and unloads model groups on the daemon's devices.

A group is one `LLMEngine` for now (dp = 1). Engine calls that block (construction,
shutdown) run in threads; outputs arrive on the engine's receiver thread and hop onto
the event loop with `call_soon_threadsafe`, so the loop never waits on model work.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mgpud.ipc import errors as codes
from mgpud.ipc.errors import MgpudError

from .state import StateStore

if TYPE_CHECKING:
    from mgpud.engine.devices import Device

log = logging.getLogger(__name__)

T = TypeVar("T")
Emit = Callable[[dict[str, Any]], None]

SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")
ENGINE_KEYS = ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "memory_utilization",
               "kv_cache_memory", "dtype")
PROGRESS_INTERVAL = 0.2  # seconds between progress frames of one phase
TTFT_WINDOW = 256  # finished requests the TTFT percentiles cover
RATE_WINDOW = 10.0  # seconds the tokens/s figure covers


def in_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `fn` in a daemon thread: unlike asyncio.to_thread, a model load still running
    when the daemon exits does not hold the process up."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def run() -> None:
        try:
            result, ok = fn(), True
        except BaseException as exc:  # delivered to the awaiting coroutine
            result, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


@dataclass(eq=False)  # hashed by identity: a group holds a set of them
class Call:
    """A running request: where its frames go, and how to cancel it."""

    client: bytes  # the ZeroMQ identity of the client that sent it
    op: str
    emit: Emit  # sends a frame to the client
    cancelled: bool = False
    on_cancel: Callable[[], None] | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.on_cancel:
            self.on_cancel()


@dataclass
class ModelGroup:
    name: str
    spec: dict[str, Any]  # the load arguments, tp and dp resolved; what the state file keeps
    devices: list[Device]
    state: str = "loading"  # loading, ready, failed, unloading
    engine: Any = None  # an LLMEngine once ready
    error: str | None = None
    progress: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)  # why this shape, when the planner chose it
    persist: bool = False  # kept in the state file
    loaded_at: float | None = None  # time.time()
    running: int = 0  # generations in flight
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    calls: set[Call] = field(default_factory=set)
    requests_total: int = 0
    requests_failed: int = 0
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=TTFT_WINDOW))  # seconds
    tokens: deque[tuple[float, int]] = field(default_factory=deque)  # (monotonic, count)

    def __post_init__(self) -> None:
        self.idle.set()

    def count_tokens(self, n: int) -> None:
        now = time.monotonic()
        self.tokens.append((now, n))
        while self.tokens and self.tokens[0][0] < now - RATE_WINDOW:
            self.tokens.popleft()

    def figures(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = sum(n for t, n in self.tokens if t >= now - RATE_WINDOW)
        ttfts = sorted(self.ttfts)
        return {
            "tokens_per_s": round(recent / RATE_WINDOW, 2),
            "ttft_p50_ms": _percentile(ttfts, 0.50),
            "ttft_p95_ms": _percentile(ttfts, 0.95),
            "requests_total": self.requests_total,
            "requests_failed": self.requests_failed,
            "running": self.running,
        }

    def describe(self) -> dict[str, Any]:
        engine = self.engine
        failure = engine.failure if engine is not None else None
        return {
            "name": self.name,
            "model": self.spec["model"],
            "state": "failed" if failure else self.state,
            "tp": self.spec["tp"],
            "dp": self.spec["dp"],
            "devices": [d.id for d in self.devices],
            "error": failure or self.error,
            "progress": self.progress if self.state == "loading" else None,
            "reasons": self.reasons,
            "loaded_at": self.loaded_at,
            "info": engine.info if engine else None,
            "stats": engine.stats() if engine else None,
            "figures": self.figures(),
            "pids": engine.info["pids"] if engine else [],
        }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(1000 * sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 2)


class ModelManager:
    def __init__(self, inventory: list[Device], store: StateStore, publish: Emit,
                 engine_defaults: Callable[[], dict[str, Any]]) -> None:
        self.inventory = inventory
        self.groups: dict[str, ModelGroup] = {}
        self.accepting = True
        self._store = store
        self._publish = publish  # lifecycle events onto the events socket
        self._engine_defaults = engine_defaults  # of the current config: SIGHUP may change them

    # -- load / unload ------------------------------------------------------------------

    async def load(self, args: dict[str, Any], emit: Emit | None, persist: bool = False) -> dict[str, Any]:
        """Load a model as the `load` operation describes; returns the group's description.
        `persist`: keep it in the state file even if it fails (it came from there)."""
        group = await self.begin_load(args, persist)
        await self.finish_load(group, emit)
        return group.describe()

    async def begin_load(self, args: dict[str, Any], persist: bool = False) -> ModelGroup:
        """Check the request, choose the shape, reserve the name and devices. Raises MgpudError."""
        self._check_accepting()
        name = args.get("name") or default_name(args["model"])
        old = self.groups.get(name)
        if old is not None and old.state != "failed":
            raise MgpudError(codes.ALREADY_EXISTS, f"a model named {name!r} is already {old.state}; "
                             "unload it first or load under another name")
        if args["dp"] > 1:
            raise MgpudError(codes.UNAVAILABLE, "dp > 1 (data-parallel replicas) is not supported yet; use dp=1")
        spec = {k: v for k, v in args.items() if k != "wait"} | {"name": name, "dp": 1}
        group = self.groups[name] = ModelGroup(name, spec, [], persist=persist)  # holds the name while planning
        try:
            if not spec["tp"]:
                spec["tp"], group.reasons = await self._auto_tp(spec)
            group.devices = self._allocate(spec["tp"], spec.get("devices"))
        except BaseException:
            del self.groups[name]
            raise
        self._publish({"kind": "model_loading", "model": name, "tp": spec["tp"], "dp": 1,
                       "devices": [d.id for d in group.devices], "reasons": group.reasons})
        return group

    async def _auto_tp(self, spec: dict[str, Any]) -> tuple[int, list[str]]:
        """The planner's TP for this model on the free (or named) devices, and its reasons."""
        from mgpud.engine.errors import EngineError

        devices = (resolve_devices(spec["devices"], self.inventory) if spec.get("devices")
                   else self._free_devices())
        if not devices:
            raise MgpudError(codes.BUSY, "every device is in use; unload a model first")
        knobs = {k: v for k, v in self._limits(spec).items() if k in ("dtype", "max_model_len", "memory_utilization")}
        try:
            plan = await asyncio.to_thread(_plan, spec["model"], devices, knobs)
        except EngineError as exc:
            raise MgpudError(codes.LOAD_FAILED, f"planning {spec['model']}: {exc}") from None
        if plan.chosen is None:
            raise MgpudError(codes.LOAD_FAILED, f"no shape fits: {'; '.join(plan.reasons)}")
        tp, dp = plan.chosen
        reasons = list(plan.reasons)
        if dp > 1:
            reasons.append(f"dp=1, not {dp}: this daemon does not run replicas yet")
        return tp, reasons

    async def finish_load(self, group: ModelGroup, emit: Emit | None) -> None:
        loop = asyncio.get_running_loop()
        progress = _ProgressRelay(group, emit, self._publish)
        config = self._engine_config(group)
        try:
            engine = await in_thread(
                lambda: _construct(config, lambda p: loop.call_soon_threadsafe(progress, p)),
                name=f"mgpud-load-{group.name}")
        except Exception as exc:
            group.state, group.error = "failed", _engine_message(exc)
            log.error("loading %s failed: %s", group.name, group.error)
            self._publish({"kind": "model_failed", "model": group.name, "error": group.error})
            raise MgpudError(codes.LOAD_FAILED, f"loading {group.name}: {group.error}") from None
        if self.groups.get(group.name) is not group or not self.accepting:
            # unloaded or shutting down while it loaded
            await in_thread(engine.shutdown, name=f"mgpud-stop-{group.name}")
            raise MgpudError(codes.SHUTTING_DOWN, f"{group.name} was unloaded while it loaded")
        group.engine, group.state, group.loaded_at, group.persist = engine, "ready", time.time(), True
        log.info("%s ready: %s", group.name, engine.info)
        self._publish({"kind": "model_ready", "model": group.name, "info": engine.info})
        await self.save()

    async def unload(self, name: str, force: bool) -> dict[str, Any]:
        group = self.get(name)
        if group.state == "loading":
            raise MgpudError(codes.BUSY, f"{name} is still loading; unload it once it is ready")
        if group.state == "unloading":
            raise MgpudError(codes.BUSY, f"{name} is already being unloaded")
        if group.state == "ready":
            group.state = "unloading"
            self._publish({"kind": "model_unloading", "model": name, "force": force})
            if force:
                for call in list(group.calls):
                    call.cancel()
            await group.idle.wait()
            await in_thread(group.engine.shutdown, name=f"mgpud-stop-{name}")
        del self.groups[name]
        self._publish({"kind": "model_unloaded", "model": name})
        await self.save()
        return {"name": name, "unloaded": True}

    async def restore(self, specs: list[dict[str, Any]], persist: bool) -> None:
        """Load, one after the other, models from the state file or the config."""
        for spec in specs:
            if not self.accepting:
                return
            if (spec.get("name") or default_name(spec["model"])) in self.groups:
                continue
            try:
                await self.load(spec, None, persist)
            except MgpudError as exc:
                log.error("could not restore %s: %s", spec.get("name") or spec["model"], exc)

    async def save(self) -> None:
        """Write the state file: the models that were ready once or came from it; a restart
        loads them again (a failed one gets another try)."""
        specs = [g.spec for g in self.groups.values() if g.persist]
        try:
            await asyncio.to_thread(self._store.save, specs)
        except OSError as exc:
            log.error("cannot write the state file %s: %s", self._store.path, exc)

    # -- generation ---------------------------------------------------------------------

    async def generate(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        """Run one generation; token frames go to call.emit unless args["stream"] is false;
        returns the final result."""
        from mgpud.engine.sampling import SamplingParams

        self._check_accepting()
        group = self.get(args["model"])
        if group.state != "ready":
            raise MgpudError(codes.BUSY if group.state == "loading" else codes.UNAVAILABLE,
                             f"{group.name} is {group.state}" + (f": {group.error}" if group.error else ""))
        params = SamplingParams(**{k: args[k] for k in SAMPLING_KEYS if args.get(k) is not None})
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[Any] = asyncio.Queue()

        def on_output(out: Any) -> None:  # on the engine's receiver thread
            try:
                loop.call_soon_threadsafe(outputs.put_nowait, out)
            except RuntimeError:
                pass  # the loop closed during shutdown

        group.running += 1
        group.idle.clear()
        group.calls.add(call)
        group.requests_total += 1
        try:
            stream = await asyncio.to_thread(group.engine.add_request, args.get("prompt"),
                                             messages=args.get("messages"), params=params,
                                             on_output=on_output)
            call.on_cancel = lambda: group.engine.cancel(stream.request_id)
            if call.cancelled:
                call.cancel()
            return await self._collect(group, outputs, call, args["stream"])
        except Exception as exc:
            group.requests_failed += 1
            raise _generation_error(group.name, exc) from None
        finally:
            group.calls.discard(call)
            group.running -= 1
            if group.running == 0:
                group.idle.set()

    async def _collect(self, group: ModelGroup, outputs: asyncio.Queue[Any], call: Call,
                       stream: bool) -> dict[str, Any]:
        token_ids: list[int] = []
        text: list[str] = []
        while True:
            out = await outputs.get()
            token_ids += out.new_token_ids
            text.append(out.new_text)
            group.count_tokens(len(out.new_token_ids))
            if stream and (out.new_text or out.new_token_ids):
                call.emit({"text": out.new_text, "token_ids": out.new_token_ids})
            if out.finished:
                break
        if out.finish_reason == "error":
            raise MgpudError(codes.REPLICA_FAILED, f"{group.name}: {out.error}")
        if out.first_token_time is not None:
            group.ttfts.append(out.first_token_time - out.arrival_time)
        return {
            "model": group.name,
            "text": "".join(text),
            "token_ids": token_ids,
            "finish_reason": out.finish_reason,
            "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                      "total_tokens": out.prompt_tokens + out.completion_tokens},
            "timings": timings(out),
        }

    def cancel_all(self) -> None:
        for group in self.groups.values():
            for call in list(group.calls):
                call.cancel()

    # -- shutdown -----------------------------------------------------------------------

    async def shutdown(self, timeout: float) -> None:
        """Refuse new work, give running generations `timeout` seconds, stop every engine."""
        self.accepting = False
        busy = [g.idle.wait() for g in self.groups.values()]
        if busy:
            done, _ = await asyncio.wait([asyncio.ensure_future(b) for b in busy], timeout=timeout)
            if len(done) < len(busy):
                log.warning("shutdown: cancelling generations still running after %.0f s", timeout)
                self.cancel_all()
                await asyncio.wait([asyncio.ensure_future(g.idle.wait()) for g in self.groups.values()],
                                   timeout=5.0)
        engines = [g.engine for g in self.groups.values() if g.engine is not None]
        await asyncio.gather(*(in_thread(e.shutdown, name="mgpud-stop") for e in engines),
                             return_exceptions=True)

    # -- lookups ------------------------------------------------------------------------

    def get(self, name: str) -> ModelGroup:
        group = self.groups.get(name)
        if group is None:
            loaded = ", ".join(self.groups) or "none"
            raise MgpudError(codes.NOT_FOUND, f"no model named {name!r} (loaded: {loaded}); "
                             "load it with the load operation (`mgpud load`)")
        return group

    def holders(self) -> dict[str, tuple[ModelGroup, int]]:
        """Device id -> (the group using it, the rank on it)."""
        return {d.id: (g, rank) for g in self.groups.values() if g.state != "failed"
                for rank, d in enumerate(g.devices)}

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise MgpudError(codes.SHUTTING_DOWN, "the daemon is shutting down and takes no new work")

    def _free_devices(self) -> list[Device]:
        taken = self.holders()
        return [d for d in self.inventory if d.id not in taken]

    def _allocate(self, count: int, names: list[str] | None) -> list[Device]:
        taken = self.holders()
        if names:
            chosen = resolve_devices(names, self.inventory)
            if len(chosen) != count:
                raise MgpudError(codes.BAD_REQUEST, f"tp x dp = {count} needs {count} devices, "
                                 f"{len(chosen)} given")
            busy = [f"{d.id} (used by {taken[d.id][0].name})" for d in chosen if d.id in taken]
            if busy:
                raise MgpudError(codes.BUSY, f"device(s) in use: {', '.join(busy)}")
            return chosen
        free = self._free_devices()
        if len(free) < count:
            raise MgpudError(codes.BUSY, f"tp x dp = {count} needs {count} free devices; "
                             f"{len(free)} of {len(self.inventory)} are free; unload a model or use a smaller shape")
        return free[:count]

    def _limits(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The engine limits a load asked for, else the config's defaults; unset ones left out."""
        merged = self._engine_defaults() | {k: spec[k] for k in ENGINE_KEYS if spec.get(k) is not None}
        return {k: v for k, v in merged.items() if v is not None}

    def _engine_config(self, group: ModelGroup) -> dict[str, Any]:
        first = group.devices[0]
        cpu = {"device_memory": first.memory_total, "threads_per_device": first.threads} if first.kind == "cpu" else {}
        return {"model": group.spec["model"], "tp": group.spec["tp"], "devices": [d.id for d in group.devices],
                **cpu, **self._limits(group.spec)}


class _ProgressRelay:
    """Turns LoadProgress into frames to the loading client and events for everyone,
    at most a few a second per phase (the engine reports every tensor)."""

    def __init__(self, group: ModelGroup, emit: Emit | None, publish: Emit) -> None:
        self._group, self._emit, self._publish = group, emit, publish
        self._last = (None, 0.0)

    def __call__(self, p: Any) -> None:
        data = {"phase": p.phase, "bytes_done": p.bytes_done, "bytes_total": p.bytes_total,
                "tensors_done": p.tensors_done, "tensors_total": p.tensors_total, "message": p.message}
        self._group.progress = data
        now = time.monotonic()
        phase, at = self._last
        if p.phase == phase and now - at < PROGRESS_INTERVAL and p.bytes_done < p.bytes_total:
            return
        self._last = (p.phase, now)
        if self._emit:
            self._emit(data)
        self._publish({"kind": "model_progress", "model": self._group.name, **data})


def _plan(model: str, devices: list[Device], knobs: dict[str, Any]) -> Any:
    """The planner's Plan for `model` on `devices` (in a thread: it reads config.json, and
    the first use of "demo" converts the demo model)."""
    from mgpud.engine.demo import resolve_model
    from mgpud.engine.planner import plan, pool_from_devices

    return plan(resolve_model(model), pool_from_devices(devices), dp=1, **knobs)


def _construct(config: dict[str, Any], progress: Callable[[Any], None]) -> Any:
    """Build the engine (in a loader thread; the import pulls in torch, once)."""
    from mgpud.engine.config import EngineConfig
    from mgpud.engine.engine import LLMEngine

    return LLMEngine(EngineConfig(**config), progress=progress)


def resolve_devices(names: list[str], inventory: list[Device]) -> list[Device]:
    """Devices named by id ("cpu:1", "cuda:0") or by bare index ("1")."""
    by_name = {d.id: d for d in inventory} | {str(d.index): d for d in inventory}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise MgpudError(codes.BAD_REQUEST, f"unknown device {unknown[0]!r}; this daemon has "
                         f"{', '.join(d.id for d in inventory)}")
    chosen = [by_name[n] for n in names]
    if len(set(d.id for d in chosen)) != len(chosen):
        raise MgpudError(codes.BAD_REQUEST, f"a device is named twice in {names}")
    return chosen


def default_name(model: str) -> str:
    """The name a model is served under when none is given: its directory's name."""
    base = Path(model.rstrip("/")).name or "model"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).lstrip("._-")
    return (cleaned or "model")[:64]


def timings(out: Any) -> dict[str, float | None]:
    """Milliseconds from the request's arrival, and decode speed, from its final output."""
    def ms(t: float | None) -> float | None:
        return None if t is None else round(1000 * (t - out.arrival_time), 3)

    decode_s = (out.finished_time or 0) - (out.first_token_time or 0)
    return {
        "queue_ms": ms(out.first_scheduled_time),
        "ttft_ms": ms(out.first_token_time),
        "total_ms": ms(out.finished_time),
        "decode_tokens_per_s": round((out.completion_tokens - 1) / decode_s, 2)
        if out.first_token_time and out.completion_tokens > 1 and decode_s > 0 else None,
    }


def _engine_message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _generation_error(name: str, exc: Exception) -> MgpudError:
    from mgpud.engine.errors import EngineDead, EngineError, InvalidRequest

    if isinstance(exc, MgpudError):
        return exc
    if isinstance(exc, InvalidRequest):
        return MgpudError(codes.INVALID_REQUEST, f"{name}: {exc}")
    if isinstance(exc, EngineDead):
        return MgpudError(codes.REPLICA_FAILED, f"{name}: {exc}")
    if isinstance(exc, EngineError):
        return MgpudError(codes.UNAVAILABLE, f"{name}: {exc}")
    log.exception("generation on %s failed", name)
    return MgpudError(codes.INTERNAL, f"{name}: {type(exc).__name__}: {exc}")

