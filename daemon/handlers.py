"""One handler per operation. Each docstring is the operation's spec: its arguments
(validated before the handler runs, see mgpud.ipc.schema), its frames, and its result.
A handler returns the result map, or raises MgpudError for an error reply.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
import zmq
from mgpud.ipc.errors import MgpudError
from mgpud.ipc.framing import PROTOCOL_VERSION
from mgpud.ipc.schema import Request

from mgpud import __version__
from mgpud.records import to_wire

from .generation import Call

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
    generations_running), its paths, the HTTP API's URL (null when off), a device count,
    the warm worker pool and one line per model (with its MoE expert_balance, null for a
    dense model)."""
    return {
        **d.summary(),
        "runtime_dir": str(d.runtime_dir),
        "control_socket": str(d.control_path),
        "events_socket": str(d.events_path),
        "state_file": str(d.store.path),
        "config_file": str(d.config.config_path) if d.config.config_path else None,
        "http": d.http.url if d.http else None,
        "devices": {"total": len(d.models.inventory), "free": len(d.models.pool.free),
                    "kinds": sorted({dev.kind for dev in d.models.inventory})},
        "warm_workers": d.models.workers(),
        "models": [{**{k: wire[k] for k in ("name", "state", "tp", "dp", "devices", "error", "progress", "weights",
                                            "kv_cache_dtype")},
                    "expert_balance": (wire["stats"] or {}).get("expert_balance")}
                   for wire in map(to_wire, d.models.describe_all())],
    }


@handler
async def devices(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """devices {} -> {devices: [device]}: each device's identity, readings (memory, utilization,
    temperature, power where known), the model, replica and rank on it, its memory split into
    weights, KV (allocated and used), activations, other and free (bytes)."""
    return {"devices": [to_wire(row) for row in d.telemetry.device_rows(d.models.describe_all())]}


@handler
async def models(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """models {} -> {models: [model], generations: [generation]}: per model name, model, state,
    tp, dp, devices, error, progress, reasons, loaded_at, and stats: the engine group's
    figures (totals, token rates, latency percentiles) with one entry per replica (state,
    devices, pids, memory, load); per running generation its daemon-wide id (what `cancel`
    takes as request), model, via (control or http) and started_at."""
    return {"models": [to_wire(m) for m in d.models.describe_all()], "generations": d.models.generations()}


@handler
async def catalog(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """catalog {} -> {models: [{ref, source, path, size_bytes, architecture, fits, shape, why}],
    roots: [dir]}: the model directories on disk that `load` could name (ref: what it takes):
    the mgpud cache (source "mgpud": the demo), the Hugging Face hub cache ("hf", ref ORG/NAME)
    and the model roots ("root"); fits: whether the planner finds a shape for it on every
    device of this daemon (shape [tp, dp], why: its first reason); null when it cannot tell."""
    return await d.models.catalog()


@handler
async def metrics(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """metrics {format="json"} -> {daemon: {summary, requests_total: {op: n}, errors_total:
    {code: n}, malformed_total, dropped_total}, models: {name: {state, tp, dp, stats}},
    devices: [device]}. format "prometheus" -> {content_type, text}: the Prometheus
    exposition the HTTP API serves at GET /metrics (mgpud.daemon.exposition)."""
    if req.args["format"] == "prometheus":
        from .exposition import render  # prometheus_client only when asked for

        body, content_type = render(d)
        return {"content_type": content_type, "text": body.decode()}
    models = d.models.describe_all()
    return {
        "daemon": daemon_figures(d),
        "models": {m.name: {"state": m.state, "tp": m.tp, "dp": m.dp, "stats": to_wire(m.stats) if m.stats else None}
                   for m in models},
        "devices": [to_wire(row) for row in d.telemetry.device_rows(models)],
    }


def daemon_figures(d: Daemon) -> dict[str, Any]:
    """The daemon's summary and its counters, as `metrics` sends them."""
    counts = d.counters
    return {
        **d.summary(),
        "requests_total": {k[3:]: n for k, n in counts.items() if k.startswith("op:")},
        "errors_total": {k[6:]: n for k, n in counts.items() if k.startswith("error:")},
        "malformed_total": counts["malformed"],
        "dropped_total": counts["dropped"],
    }


@handler
async def load(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """load {model, name?, tp=0, dp=0, devices?, max_model_len?, max_num_seqs?,
    max_num_batched_tokens?, memory_utilization?, kv_cache_memory?, dtype?, enforce_eager=false, wait=true}
    -> frames: progress {phase, bytes_done, bytes_total, tensors_done, tensors_total,
       message} and replica events {kind, replica, devices, ...}
    -> the model's description (as in `models`), state "ready".
    tp or dp 0: the planner chooses (its reasons are in `reasons`). With wait=false: no
    frames; the reply comes at once with state "loading"; watch `models` or the events."""
    if req.args["wait"]:
        return await d.models.load(req.args, call.emit)
    model = await d.models.begin_load(req.args)
    d.spawn(_quietly(d.models.finish_load(model)), name="load")
    return to_wire(model.describe())


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
    """reconfigure {name, tp?, dp?, enable_expert_parallel?} -> frames: load progress of new replicas ({phase, ...})
    and replica events ({kind, ...}) -> {from: {tp, dp}, to: {tp, dp}, duration_s, held_s,
    model: the new description}. The model serves throughout; requests that arrive while
    no replica is ready wait in its queue (held_s). An omitted tp, dp or expert placement
    stays as it is."""
    args = req.args
    return await d.models.reconfigure(args["name"], args["tp"], args["dp"], call.emit,
                                      args["enable_expert_parallel"])


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
    """cancel {id | request | model | all} -> {cancelled: bool, requests: [request_id]}.
    Cancels the generate with that id sent earlier on the same connection; or the generation
    with that daemon-wide request_id, from any client; or every generation of a model
    (not_found without such a model); or, with all=true, every generation. Each then ends
    with finish_reason "cancelled". cancelled: whether any was; false when none runs (it
    may just have finished)."""
    args = req.args
    if args["id"] is not None:
        return _cancel_own(d.calls.get((call.client, args["id"])))
    ids = [] if args["all"] is False else d.models.cancel(args["request"], args["model"])
    return {"cancelled": bool(ids), "requests": ids}


def _cancel_own(target: Call | None) -> dict[str, Any]:
    if target is None or target.op != "generate":
        return {"cancelled": False, "requests": []}
    target.cancel()
    return {"cancelled": True, "requests": [target.request_id] if target.request_id else []}


@handler
async def plan(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """plan {model?, name?, tp?, dp?, the engine limits of load (dtype also fp8, int8)?,
    concurrency?} -> the planner's plan on the devices a load could use (the free ones) or,
    with `name`, a reshape of that model (its devices too), under the limits it would run
    with (the request's, else the named model's, else the config's): shapes (fits, why,
    memory and throughput figures per shape), impossible TP degrees and why, chosen
    [tp, dp], reasons, notes. tp and dp as given are judged exactly; omitted: the planner
    chooses, or with `name` they stay the model's."""
    return (await d.models.plan(req.args)).to_dict()


@handler
async def shutdown(d: Daemon, req: Request, call: Call) -> dict[str, Any]:
    """shutdown {timeout?} -> {stopping: true, timeout}. The daemon then stops as on SIGTERM:
    new work gets shutting_down, running generations get `timeout` seconds (default: the
    configured shutdown_timeout), engines stop, the daemon exits 0."""
    timeout = req.args["timeout"]
    d.stop(timeout)
    return {"stopping": True, "timeout": d.stop_timeout}
