"""One handler per operation. Each docstring is the operation's spec: its arguments
(validated before the handler runs, see mgpud.ipc.schema), its frames, and its result.
A handler returns the result map, or raises MgpudError for an error reply.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from mgpud import __version__
from mgpud.ipc import errors as codes
from mgpud.ipc.errors import MgpudError
from mgpud.ipc.framing import PROTOCOL_VERSION
from mgpud.ipc.schema import Request

from .models import Call

if TYPE_CHECKING:
    from .server import Daemon

Handler = Callable[["Daemon", Request, Call], Awaitable[dict[str, Any]]]
HANDLERS: dict[str, Handler] = {}


def handler(fn: Handler) -> Handler:
    HANDLERS[fn.__name__] = fn
    return fn


@handler
async def ping(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """ping {} -> {pong: true, pid, time}. Answered by the loop itself, never waits on models."""
    return {"pong": True, "pid": os.getpid(), "time": time.time()}


@handler
async def version(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """version {} -> {version, protocol, python, pyzmq, libzmq, msgpack}."""
    return {"version": __version__, "protocol": PROTOCOL_VERSION, "python": platform.python_version(),
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "msgpack": ".".join(map(str, msgpack.version))}


@handler
async def status(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """status {} -> the daemon summary (version, protocol, pid, state, started_at, uptime_s,
    requests_running), its paths, a device count and one line per model."""
    free = len(d.models.inventory) - len(d.models.holders())
    return {
        **d.summary(),
        "runtime_dir": str(d.runtime_dir),
        "control_socket": str(d.control_path),
        "events_socket": str(d.events_path),
        "state_file": str(d.store.path),
        "config_file": str(d.config.config_path) if d.config.config_path else None,
        "devices": {"total": len(d.models.inventory), "free": free,
                    "kinds": sorted({dev.kind for dev in d.models.inventory})},
        "models": [{k: g[k] for k in ("name", "state", "tp", "dp", "devices", "error", "progress")}
                   for g in (group.describe() for group in d.models.groups.values())],
    }


@handler
async def devices(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """devices {} -> {devices: [device]}: each device's identity, readings (memory, utilization,
    temperature, power where known), the model and rank on it, and its memory split into
    weights, KV (allocated and used), activations, other and free (bytes)."""
    return {"devices": d.telemetry.device_rows()}


@handler
async def models(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """models {} -> {models: [model]}: name, model, state, tp, dp, devices, error, progress,
    reasons, loaded_at, info (from the engine), stats (engine counters), figures
    (tokens_per_s, ttft_p50_ms, ttft_p95_ms, requests_total, requests_failed, running), pids."""
    return {"models": [g.describe() for g in d.models.groups.values()]}


@handler
async def metrics(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """metrics {} -> {daemon: {summary, requests_total: {op: n}, errors_total: {code: n},
    malformed_total, dropped_total}, models: {name: {state, stats, figures}}, devices: [device]}."""
    counts = d.counters
    return {
        "daemon": {
            **d.summary(),
            "requests_total": {k[3:]: n for k, n in counts.items() if k.startswith("op:")},
            "errors_total": {k[6:]: n for k, n in counts.items() if k.startswith("error:")},
            "malformed_total": counts["malformed"],
            "dropped_total": counts["dropped"],
        },
        "models": {m["name"]: {k: m[k] for k in ("state", "tp", "dp", "stats", "figures")}
                   for m in (g.describe() for g in d.models.groups.values())},
        "devices": d.telemetry.device_rows(),
    }


@handler
async def load(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """load {model, name?, tp=0, dp=0, devices?, max_model_len?, max_num_seqs?,
    max_num_batched_tokens?, memory_utilization?, kv_cache_memory?, dtype?, wait=true}
    -> frames {phase, bytes_done, bytes_total, tensors_done, tensors_total, message}
    -> the model's description (as in `models`), state "ready".
    tp=0 lets the planner choose (its reasons are in `reasons`). With wait=false: no
    frames; the reply comes at once with state "loading"; watch `models` or the events."""
    if req.args["wait"]:
        return await d.models.load(req.args, call.emit)
    group = await d.models.begin_load(req.args)
    d.spawn(_quietly(d.models.finish_load(group, None)), name="load")
    return group.describe()


async def _quietly(work: Awaitable[None]) -> None:
    """A background load: its failure is logged and published, nobody awaits the error."""
    try:
        await work
    except MgpudError:
        pass


@handler
async def unload(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """unload {name, force=false} -> {name, unloaded: true}. New generations are refused at
    once; running ones finish first, or are cancelled with force. A failed model is removed."""
    return await d.models.unload(req.args["name"], req.args["force"])


@handler
async def reconfigure(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """reconfigure {name, tp?, dp?} -> unavailable for now: live resharding comes with replicas."""
    d.models.get(req.args["name"])
    raise MgpudError(codes.UNAVAILABLE, "reconfigure (live resharding) is not supported yet; "
                     "unload the model and load it again with the new tp and dp")


@handler
async def generate(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """generate {model, prompt | messages, max_tokens?, temperature?, top_p?, top_k?, seed?,
    stop?, ignore_eos?, stream=true}
    -> frames {text, token_ids} as tokens come (none with stream=false)
    -> {model, text, token_ids, finish_reason, usage: {prompt_tokens, completion_tokens,
       total_tokens}, timings: {queue_ms, ttft_ms, total_ms, decode_tokens_per_s}}.
    finish_reason: stop, length or cancelled. Errors: not_found, busy (loading),
    unavailable (unloading), invalid_request, replica_failed, shutting_down."""
    return await d.models.generate(req.args, call)


@handler
async def cancel(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """cancel {id} -> {cancelled: bool}. Cancels the generate with that id sent earlier on the
    same connection; it then ends with finish_reason "cancelled". False when no such
    generation runs (it may just have finished)."""
    target = d.calls.get((call.client, req.args["id"]))
    if target is None or target.op != "generate":
        return {"cancelled": False}
    target.cancel()
    return {"cancelled": True}


@handler
async def plan(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """plan {model, dtype?, max_model_len?, memory_utilization?, concurrency?} -> the planner's
    plan for this daemon's devices: shapes (fits, why, memory and throughput figures per
    shape), impossible TP degrees and why, chosen [tp, dp], reasons, notes."""
    from mgpud.engine.demo import resolve_model
    from mgpud.engine.errors import EngineError
    from mgpud.engine.planner import plan as make_plan
    from mgpud.engine.planner import pool_from_devices

    knobs = {k: v for k, v in req.args.items() if k != "model" and v is not None}
    model = req.args["model"]
    try:
        result = await asyncio.to_thread(
            lambda: make_plan(resolve_model(model) if model == "demo" else model,
                              pool_from_devices(d.telemetry.devices), **knobs))
    except EngineError as exc:
        raise MgpudError(codes.BAD_REQUEST, str(exc)) from None
    return result.to_dict()


@handler
async def shutdown(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """shutdown {timeout?} -> {stopping: true, timeout}. The daemon then stops as on SIGTERM:
    new work gets shutting_down, running generations get `timeout` seconds (default: the
    configured shutdown_timeout), engines stop, the daemon exits 0."""
    timeout = req.args["timeout"]
    d.stop(timeout)
    return {"stopping": True, "timeout": d.stop_timeout}
