"""The model manager: loads, serves, reshapes and unloads the daemon's models.

Each model is an engine `ModelGroup` (dp replicas of a tp-way sharded engine) on devices
from one host-wide `DevicePool`. Engine calls that block (construction, reconfigure,
shutdown, tokenizing a prompt) run in threads; outputs and events arrive on engine
threads and hop onto the event loop with `call_soon_threadsafe`, so the loop never
waits on model work.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mgpud.ipc import errors as codes
from mgpud.ipc.errors import MgpudError
from mgpud.ipc.schema import ENGINE_LIMIT_KEYS, SAMPLING_KEYS

from mgpud.records import LoadProgress, ModelRecord, to_wire

from . import memory
from .advisor import check_model, run_planner, usable_devices, warm_planner
from .generation import HTTP_CLIENT, Call, Emit, collect, generation_error
from .statefile import StateStore
from .threads import call_soon, in_thread

if TYPE_CHECKING:
    from mgpud.engine.planning.planner import Plan

    from mgpud.records import Device

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.2  # seconds between progress frames of one phase
SERVING = ("ready", "reconfiguring")  # states in which a model takes generations
STOP_TIMEOUT = 30.0  # seconds the engines get to stop when the daemon exits


@dataclass(eq=False)
class Model:
    name: str
    spec: dict[str, Any]  # the load arguments, tp and dp resolved: what the state file keeps
    persist: bool  # kept in the state file (it was ready once, or came from there)
    state: str = "loading"  # loading, ready, reconfiguring, unloading, failed
    group: Any = None  # the engine's ModelGroup once loaded
    error: str | None = None
    progress: LoadProgress | None = None
    reasons: list[str] = field(default_factory=list)  # why this shape, when the planner chose it
    auto: list[str] = field(default_factory=list)  # which of tp, dp the planner chose
    path: str = ""  # the directory (or "demo") that spec["model"] named when it was loaded
    loaded_at: float | None = None  # time.time()
    starting: list[str] = field(default_factory=list)  # devices taken while the group loads
    running: int = 0  # generations in flight
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    calls: set[Call] = field(default_factory=set)
    watchers: set[Emit] = field(default_factory=set)  # clients following a load or reconfigure

    def __post_init__(self) -> None:
        self.idle.set()

    def describe(self) -> ModelRecord:
        stats = self.group.stats() if self.group is not None else None
        loaded = next((r for r in stats.replicas if r.dtype), None) if stats else None
        return ModelRecord(
            name=self.name, model=self.spec["model"],
            # with a group: ready, degraded (a replica down), failed, reconfiguring
            state=stats.state if stats and self.state == "ready" else self.state,
            tp=stats.tp if stats else self.spec["tp"], dp=stats.dp if stats else self.spec["dp"],
            devices=[d for r in stats.replicas for d in r.devices] if stats else list(self.starting),
            error=self.error, progress=self.progress if self.state in ("loading", "reconfiguring") else None,
            reasons=self.reasons, loaded_at=self.loaded_at, stats=stats, auto=self.auto,
            weights=(loaded.quantization or loaded.dtype) if loaded else None,
            kv_cache_dtype=loaded.kv_cache_dtype if loaded else None)


class ModelManager:
    def __init__(self, inventory: list[Device], store: StateStore, publish: Emit,
                 engine_defaults: Callable[[], dict[str, Any]], readings: Callable[[], list[Device]],
                 roots: Callable[[], list[Path]], warm_workers: int = 0) -> None:
        from mgpud.engine.core.warm import WarmPool
        from mgpud.engine.serving.pool import DevicePool

        self.inventory = inventory
        self._readings = readings  # the devices as last read: what other processes hold on them
        # Worker processes kept started (torch imported) for the replicas to come.
        self.pool = DevicePool([d.id for d in inventory], WarmPool(warm_workers) if warm_workers else None)
        self.models: dict[str, Model] = {}
        self.accepting = True
        self._store = store
        self._publish = publish  # lifecycle events onto the events socket
        self._engine_defaults = engine_defaults  # of the current config: SIGHUP may change them
        self._roots = roots  # the model roots of the current config; none: any directory
        self._releaser = memory.Releaser()  # hands back what long prompts took
        self._generation_ids = itertools.count(1)
        self._planner_warmed = False

    def workers(self) -> dict[str, int]:
        """The warm worker pool: ready (imported, waiting), starting, and its target size."""
        if self.pool.workers is None:
            return {"ready": 0, "starting": 0, "target": 0}
        ready, starting = self.pool.workers.counts()
        return {"ready": ready, "starting": starting, "target": self.pool.workers.size}

    # -- load / unload ------------------------------------------------------------------

    async def load(self, args: dict[str, Any], emit: Emit | None, persist: bool = False) -> dict[str, Any]:
        """Load a model as the `load` operation describes; returns its description.
        `persist`: keep it in the state file even if it fails (it came from there)."""
        model = await self.begin_load(args, persist)
        if emit:
            model.watchers.add(emit)
        await self.finish_load(model)
        return to_wire(model.describe())

    async def begin_load(self, args: dict[str, Any], persist: bool = False) -> Model:
        """Check the request, choose the shape, hold the name. Raises MgpudError."""
        self._check_accepting()
        name = args.get("name") or default_name(args["model"])
        old = self.models.get(name)
        if old is not None and old.state != "failed":
            raise MgpudError(codes.ALREADY_EXISTS, f"a model named {name!r} is already {old.state}; "
                             "unload it first or load under another name")
        spec = {k: v for k, v in args.items() if k != "wait"} | {"name": name}
        model = self.models[name] = Model(name, spec, persist)  # holds the name while planning
        try:
            model.path = await self.locate(spec["model"])
            if not persist:  # a model of the state file fails in finish_load: it stays, as failed
                await self._check_model(spec, model.path)
            devices = self._devices_for(spec)
            if not (spec["tp"] and spec["dp"]):
                model.auto = [k for k in ("tp", "dp") if not spec[k]]
                spec["tp"], spec["dp"], model.reasons = await self._plan_shape(spec, model.path, devices)
                log.info("%s: %s (%s)", name, " ".join(f"auto {k}={spec[k]}" for k in model.auto),
                         "; ".join(model.reasons))
            self._check_count(spec, devices)
        except BaseException:
            del self.models[name]
            raise
        self._publish({"kind": "model_loading", "model": name, "tp": spec["tp"], "dp": spec["dp"],
                       "reasons": model.reasons})
        return model

    async def finish_load(self, model: Model) -> None:
        loop = asyncio.get_running_loop()
        progress = _ProgressRelay(model, self._publish)
        spec = model.spec
        config = engine_config(model.path, spec, self._cpu_settings(), self._limits(spec))
        try:
            group = await in_thread(lambda: _construct(
                config, spec["dp"], self.pool, model.name, spec.get("devices"),
                progress=lambda p: call_soon(loop, progress, p),
                on_event=lambda e: call_soon(loop, self._on_group_event, model, e)),
                name=f"mgpud-load-{model.name}")
        except Exception as exc:
            model.state, model.error, model.starting = "failed", str(exc) or type(exc).__name__, []
            self._publish({"kind": "model_failed", "model": model.name, "error": model.error})
            raise MgpudError(codes.LOAD_FAILED, f"loading {model.name}: {model.error}") from None
        finally:
            model.watchers.clear()
        if self.models.get(model.name) is not model or not self.accepting:
            await in_thread(group.shutdown, name=f"mgpud-stop-{model.name}")
            raise MgpudError(codes.SHUTTING_DOWN, f"{model.name} was unloaded while it loaded")
        model.group, model.state, model.loaded_at, model.persist = group, "ready", time.time(), True
        self._publish({"kind": "model_ready", "model": model.name, "tp": spec["tp"], "dp": spec["dp"]})
        self._warm_planner()
        await self.save()

    def _warm_planner(self) -> None:
        """The daemon imports torch only for the planner's CPU figures, on its first use; once
        a model is loaded (the dashboard's load and scale dialogs ask it next), in the background."""
        if not self._planner_warmed and any(d.kind == "cpu" for d in self.inventory):
            self._planner_warmed = True
            threading.Thread(target=warm_planner, name="mgpud-planner-warm", daemon=True).start()

    async def unload(self, name: str, force: bool) -> dict[str, Any]:
        model = self.get(name)
        if model.state not in ("ready", "failed"):
            raise MgpudError(codes.BUSY, f"{name} is {model.state}; unload it once that is over")
        if model.group is not None:
            model.state = "unloading"
            self._publish({"kind": "model_unloading", "model": name, "force": force})
            if force:
                for call in list(model.calls):
                    call.cancel()
            await model.idle.wait()
            await in_thread(model.group.shutdown, name=f"mgpud-stop-{name}")
        del self.models[name]
        self._publish({"kind": "model_unloaded", "model": name})
        await self.save()
        return {"name": name, "unloaded": True}

    async def reconfigure(self, name: str, tp: int | None, dp: int | None, emit: Emit,
                          expert_parallel: bool | None = None) -> dict[str, Any]:
        """Reshape a serving model; returns the engine's report and the new description."""
        from mgpud.engine.exceptions import EngineError

        self._check_accepting()
        model = self.get(name)
        if model.state != "ready":
            raise MgpudError(codes.BUSY, f"{name} is {model.state}; it can be reconfigured once ready")
        tp, dp = tp or model.group.tp, dp or model.group.dp
        loop = asyncio.get_running_loop()
        progress = _ProgressRelay(model, self._publish)
        model.state, model.progress = "reconfiguring", None  # the load's last progress is over
        model.watchers.add(emit)
        try:
            report = await in_thread(lambda: model.group.reconfigure(
                tp, dp, progress=lambda p: call_soon(loop, progress, p), expert_parallel=expert_parallel),
                name=f"mgpud-reshape-{name}")
        except EngineError as exc:
            log.warning("reshaping %s to tp=%d dp=%d failed: %s", name, tp, dp, exc)
            raise MgpudError(codes.LOAD_FAILED, f"reconfiguring {name}: {exc}") from None
        finally:
            model.state = "ready" if model.state == "reconfiguring" else model.state
            model.watchers.clear()
        model.spec.update(tp=tp, dp=dp, enable_expert_parallel=model.group.config.enable_expert_parallel)
        await self.save()
        return {**report, "model": to_wire(model.describe())}

    async def plan(self, args: dict[str, Any]) -> Plan:
        """The planner's Plan, as the `plan` operation describes: for a load of args["model"]
        on the free devices or, with args["name"], for a reshape of that loaded model."""
        from mgpud.engine.exceptions import EngineError

        reshaped = self.get(args["name"]) if args["name"] else None
        # Omitted arguments mean what they mean to the operation planned: a load's planner
        # chooses the shape; a reshape keeps the model's tp or dp and its engine limits.
        ask = (reshaped.spec if reshaped else {"tp": 0, "dp": 0}) | {k: v for k, v in args.items() if v is not None}
        devices = usable_devices(self._readings(), self.pool.free, _workers(reshaped) if reshaped else {})
        try:
            path = reshaped.path if reshaped else await self.locate(ask["model"])
            return await asyncio.to_thread(run_planner, path, devices, ask["tp"], ask["dp"],
                                           self._limits(ask), args["concurrency"])
        except EngineError as exc:
            raise MgpudError(codes.BAD_REQUEST, str(exc)) from None

    async def catalog(self) -> dict[str, Any]:
        """The models on disk, as the `catalog` operation describes them."""
        from mgpud.engine.store.locate import all_roots, on_disk

        roots = self._roots()
        found = await asyncio.to_thread(on_disk, roots)
        verdicts = await asyncio.gather(*(self._fits(str(f.path) if f.source != "mgpud" else f.ref) for f in found))
        models = [{"ref": f.ref, "source": f.source, "path": str(f.path), "size_bytes": f.size_bytes,
                   "architecture": f.architecture, **verdict} for f, verdict in zip(found, verdicts, strict=True)]
        return {"models": models, "roots": [str(r) for r in all_roots(roots)] if roots else []}

    async def _fits(self, path: str) -> dict[str, Any]:
        """Whether the planner finds a shape for `path` on all of this daemon's devices."""
        from mgpud.engine.exceptions import EngineError

        try:
            plan = await asyncio.to_thread(run_planner, path, self._readings(), 0, 0, self._limits({}))
        except EngineError as exc:
            return {"fits": None, "shape": None, "why": str(exc)}
        return {"fits": plan.chosen is not None, "shape": list(plan.chosen) if plan.chosen else None,
                "why": plan.reasons[0] if plan.reasons else ""}

    async def restore(self, specs: list[dict[str, Any]], persist: bool) -> None:
        """Load, one after the other, models from the state file or the config."""
        for spec in specs:
            if not self.accepting:
                return
            if (spec.get("name") or default_name(spec["model"])) in self.models:
                continue
            try:
                await self.load(spec, None, persist)
            except MgpudError as exc:
                log.error("could not restore %s: %s", spec.get("name") or spec["model"], exc)

    async def save(self) -> None:
        """Write the state file: the models that were ready once or came from it; a restart
        loads them again (a failed one gets another try)."""
        specs = [m.spec for m in self.models.values() if m.persist]
        try:
            await asyncio.to_thread(self._store.save, specs)
        except OSError as exc:
            log.error("cannot write the state file %s: %s", self._store.path, exc)

    def _on_group_event(self, model: Model, event: dict[str, Any]) -> None:
        """A replica or reconfigure event of the engine, now on the loop."""
        if event["kind"] == "replica_starting" and model.group is None:
            model.starting += event["devices"]
        for emit in list(model.watchers):
            emit(event)
        self._publish(event)

    # -- generation ---------------------------------------------------------------------

    async def generate(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        """Run one generation; token frames go to call.emit unless args["stream"] is false;
        returns the final result."""
        from mgpud.engine.core.sampling import SamplingParams

        call.request_id, call.started_at = f"gen-{next(self._generation_ids)}", time.time()
        self._check_accepting()
        model = self.get(args["model"])
        if model.state not in SERVING:
            raise MgpudError(codes.BUSY if model.state == "loading" else codes.UNAVAILABLE,
                             f"{model.name} is {model.state}" + (f": {model.error}" if model.error else ""))
        params = SamplingParams(**{k: args[k] for k in SAMPLING_KEYS if args[k] is not None})
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        model.running += 1
        model.idle.clear()
        model.calls.add(call)
        try:
            request_id = await asyncio.to_thread(model.group.add_request, args["prompt"],
                                                 messages=args["messages"], params=params,
                                                 on_output=lambda out: call_soon(loop, outputs.put_nowait, out))
            call.on_cancel = lambda: model.group.cancel(request_id)
            if call.cancelled:
                call.cancel()
            return {"request_id": call.request_id,
                    **await collect(model.name, outputs, call.emit if args["stream"] else None)}
        except Exception as exc:
            raise generation_error(model.name, exc) from None
        finally:
            self._releaser.after(args)
            model.calls.discard(call)
            model.running -= 1
            if model.running == 0:
                model.idle.set()

    def generations(self) -> list[dict[str, Any]]:
        """The generations running, oldest first, as `models` lists them."""
        return [_generation(call, model) for call, model in _running(self.models.values())]

    def cancel(self, request: str | None = None, model: str | None = None) -> list[str]:
        """Cancel the generation with that daemon-wide id, or those of a model, or (neither
        given) all; the ids of those cancelled, oldest first."""
        models = [self.get(model)] if model is not None else self.models.values()
        calls = [call for call, _ in _running(models) if request is None or call.request_id == request]
        for call in calls:
            call.cancel()
        return [str(call.request_id) for call in calls]

    def cancel_all(self) -> None:
        self.cancel()

    # -- shutdown -----------------------------------------------------------------------

    async def shutdown(self, timeout: float) -> None:
        """Refuse new work, give running generations `timeout` seconds, stop every group."""
        self.accepting = False
        if not await _all_idle(self.models.values(), timeout):
            log.warning("shutdown: cancelling generations still running after %.0f s", timeout)
            self.cancel_all()
            await _all_idle(self.models.values(), 5.0)
        if self.pool.workers is not None:
            await in_thread(self.pool.workers.close, name="mgpud-stop")
        groups = [m.group for m in self.models.values() if m.group is not None]
        if not groups:
            return
        stopping = [in_thread(g.shutdown, name="mgpud-stop") for g in groups]
        # An engine can hang in shutdown (e.g. its workers were killed by a signal sent to the
        # whole process group); the daemon exits anyway: its daemon threads do not hold the
        # process, and workers exit when their parent does.
        done, stuck = await asyncio.wait(stopping, timeout=STOP_TIMEOUT)
        for failed in (f.exception() for f in done):
            if failed:
                log.error("stopping a model failed: %s", failed)
        if stuck:
            log.error("%d model(s) did not stop within %.0f s; exiting without them", len(stuck), STOP_TIMEOUT)

    # -- lookups ------------------------------------------------------------------------

    def get(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            loaded = ", ".join(self.models) or "none"
            raise MgpudError(codes.NOT_FOUND, f"no model named {name!r} (loaded: {loaded}); "
                             "load it with the load operation (`mgpud load`)")
        return model

    def describe_all(self) -> list[ModelRecord]:
        return [m.describe() for m in self.models.values()]

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise MgpudError(codes.SHUTTING_DOWN, "the daemon is shutting down and takes no new work")

    def _devices_for(self, spec: dict[str, Any]) -> list[Device]:
        """The devices a load may use: those it names, else the free ones."""
        free = set(self.pool.free)
        if not spec.get("devices"):
            return [d for d in self.inventory if d.id in free]
        chosen = resolve_devices(spec["devices"], self.inventory)
        busy = [d.id for d in chosen if d.id not in free]
        if busy:
            raise MgpudError(codes.BUSY, f"device(s) in use: {', '.join(busy)}")
        spec["devices"] = [d.id for d in chosen]
        return chosen

    def _check_count(self, spec: dict[str, Any], devices: list[Device]) -> None:
        need = spec["tp"] * spec["dp"]
        shape = f"tp={spec['tp']} x dp={spec['dp']} needs {need} device{'s' * (need > 1)}"
        if spec.get("devices") and need != len(devices):
            raise MgpudError(codes.BAD_REQUEST, f"{shape}; {len(devices)} named")
        if need > len(devices):
            raise MgpudError(codes.BUSY, f"{shape}; {len(devices)} of {len(self.inventory)} are free "
                             f"({', '.join(d.id for d in devices) or 'none'}): unload a model or use a smaller shape")

    async def locate(self, ref: str) -> str:
        """The directory (or "demo") that a load's `model` names: a path within the model
        roots, or a Hugging Face id found in the local hub cache."""
        from mgpud.engine.exceptions import EngineError
        from mgpud.engine.store.locate import locate

        try:
            return await asyncio.to_thread(locate, ref, self._roots())
        except EngineError as exc:
            raise MgpudError(codes.LOAD_FAILED, str(exc)) from None

    async def _check_model(self, spec: dict[str, Any], path: str) -> None:
        """What the model alone rules out, before the devices are counted."""
        from mgpud.engine.exceptions import EngineError

        try:
            await asyncio.to_thread(check_model, path, spec["tp"])
        except EngineError as exc:
            raise MgpudError(codes.LOAD_FAILED, f"loading {spec['name']}: {exc}") from None

    async def _plan_shape(self, spec: dict[str, Any], path: str, devices: list[Device]) -> tuple[int, int, list[str]]:
        """The planner's (tp, dp) for this model on `devices` where the load left one at 0."""
        from mgpud.engine.exceptions import EngineError

        usable = usable_devices(self._readings(), {d.id for d in devices}, {})
        try:
            plan = await asyncio.to_thread(run_planner, path, usable, spec["tp"], spec["dp"],
                                           self._limits(spec))
        except EngineError as exc:
            raise MgpudError(codes.LOAD_FAILED, f"planning {spec['model']}: {exc}") from None
        if plan.chosen is None:
            raise MgpudError(codes.LOAD_FAILED, f"no shape fits: {'; '.join(plan.reasons)}")
        tp, dp = plan.chosen
        return tp, dp, list(plan.reasons)

    def _limits(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The engine limits a load asked for, else the config's defaults; unset ones left out."""
        merged = self._engine_defaults() | {k: spec[k] for k in ENGINE_LIMIT_KEYS if spec.get(k) is not None}
        return {k: v for k, v in merged.items() if v is not None}

    def _cpu_settings(self) -> dict[str, Any]:
        first = self.inventory[0]
        return {"device_memory": first.memory_total, "threads_per_device": first.threads} if first.kind == "cpu" else {}


class _ProgressRelay:
    """Turns LoadProgress into frames to the clients following the model and events for
    everyone, at most a few a second per phase (the engine reports every tensor)."""

    def __init__(self, model: Model, publish: Emit) -> None:
        self._model, self._publish = model, publish
        self._last: tuple[str | None, float] = (None, 0.0)

    def __call__(self, p: LoadProgress) -> None:
        self._model.progress = p
        now = time.monotonic()
        phase, at = self._last
        if p.phase == phase and now - at < PROGRESS_INTERVAL and p.bytes_done < p.bytes_total:
            return
        self._last = (p.phase, now)
        data = to_wire(p)
        for emit in list(self._model.watchers):
            emit(data)
        self._publish({"kind": "model_progress", "model": self._model.name, **data})


async def _all_idle(models: Any, timeout: float) -> bool:
    """Whether every model's generations ended within `timeout` seconds."""
    waits = [asyncio.ensure_future(m.idle.wait()) for m in models]
    if not waits:
        return True
    _, pending = await asyncio.wait(waits, timeout=timeout)
    for w in pending:
        w.cancel()
    return not pending


def _running(models: Iterable[Model]) -> list[tuple[Call, str]]:
    """The generations of `models` with their model's name, oldest first."""
    running = [(call, m.name) for m in models for call in m.calls]
    return sorted(running, key=lambda pair: pair[0].started_at or 0)


def _generation(call: Call, model: str) -> dict[str, Any]:
    via = "http" if call.client == HTTP_CLIENT else "control"
    return {"id": call.request_id, "model": model, "via": via, "started_at": call.started_at}


def _workers(model: Model) -> dict[str, set[int]]:
    """The model's devices -> its worker pids, all of which a reshape may stop."""
    if model.group is None:
        return {}
    replicas = model.group.stats().replicas
    pids = {pid for r in replicas for pid in r.pids}
    return {device: pids for r in replicas for device in r.devices}


def engine_config(path: str, spec: dict[str, Any], device_settings: dict[str, Any], limits: dict[str, Any]
                  ) -> dict[str, Any]:
    """The EngineConfig arguments of a checked load `spec` of the model directory `path`: its
    TP degree, the devices' settings, the engine limits, and the eager flag."""
    return {"model": path, "tp": spec["tp"], **device_settings, **limits,
            "enforce_eager": spec["enforce_eager"]}


def _construct(config: dict[str, Any], dp: int, pool: Any, name: str, devices: list[str] | None,
               progress: Callable[[Any], None], on_event: Emit) -> Any:
    """Build the model group (in a loader thread; the import pulls in torch, once)."""
    from mgpud.engine.config import EngineConfig
    from mgpud.engine.serving.group import ModelGroup

    return ModelGroup(EngineConfig(**config), dp=dp, pool=pool, name=name, devices=devices,
                      progress=progress, on_event=on_event)


def resolve_devices(names: list[str], inventory: list[Device]) -> list[Device]:
    """Devices named by id ("cpu:1", "cuda:0") or by bare index ("1")."""
    by_name = {d.id: d for d in inventory} | {str(d.index): d for d in inventory}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise MgpudError(codes.BAD_REQUEST, f"unknown device {unknown[0]!r}; this daemon has "
                         f"{', '.join(d.id for d in inventory)}")
    chosen = [by_name[n] for n in names]
    if len({d.id for d in chosen}) != len(chosen):
        raise MgpudError(codes.BAD_REQUEST, f"a device is named twice in {names}")
    return chosen


def default_name(model: str) -> str:
    """The name a model is served under when none is given: its directory's name."""
    base = Path(model.rstrip("/")).name or "model"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).lstrip("._-")
    return (cleaned or "model")[:64]
