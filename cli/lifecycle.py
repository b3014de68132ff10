"""`mgpud load`, `mgpud unload` and `mgpud scale`: a model's life on the daemon."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from mgpud.ipc.schema import ENGINE_LIMIT_KEYS
from mgpud.records import ModelRecord, ReplicaFigures, from_wire
from mgpud.units import fmt_bytes

from .context import Settings, complete_model_names, global_options, pass_settings
from .output import state
from .params import SIZE, F, schema_argument, schema_option
from .progress import ProgressView, follow

# Where the command line words an engine limit otherwise than the schema: vLLM's flag
# name for the memory share, and a size written with units.
_LIMIT_OPTIONS: dict[str, dict[str, Any]] = {
    "memory_utilization": {"decls": ("--gpu-memory-utilization",), "metavar": "FRACTION",
                           "help": "Share of each device's memory the model may use (CPU devices too)."},
    "kv_cache_memory": {"type": SIZE, "help": "KV cache per rank, e.g. 2GiB; overrides profiling."},
    "enable_expert_parallel": {"decls": ("--enable-expert-parallel", "--ep")},  # --ep: vLLM's short name
}


# Ours first, then vLLM's spellings, so that a command line copied from vLLM works as it is.
TP_FLAGS = ("--tp", "--tensor-parallel-size", "-tp")
DP_FLAGS = ("--dp", "--data-parallel-size", "-dp")


def engine_limit_options(fn: F) -> F:
    """An option per engine limit that `load` takes (ENGINE_LIMIT_KEYS), each left unset by default."""
    for key in reversed(ENGINE_LIMIT_KEYS):
        attrs = dict(_LIMIT_OPTIONS.get(key, {}))
        fn = schema_option("load", key, *attrs.pop("decls", ()), **attrs)(fn)
    return fn


@click.command()
@click.argument("model")
@schema_option("load", "name", help="Name to serve it under (default: the directory's name; `demo` for demo).")
@schema_option("load", "tp", *TP_FLAGS, default=0, show_default=True,
               help="Tensor-parallel degree; 0 = the planner chooses.")
@schema_option("load", "dp", *DP_FLAGS, default=0, show_default=True,
               help="Data-parallel replicas; 0 = the planner chooses.")
@click.option("--devices", metavar="ID,ID,..", help="Devices to use, e.g. cpu:0,cpu:1 or 0,1 (default: free ones).")
@engine_limit_options
@schema_option("load", "enforce_eager", help="No CUDA graphs: every GPU step runs eagerly (vLLM's flag).")
@click.option("--no-wait", is_flag=True, help="Return at once; the load goes on in the background.")
@global_options()
@pass_settings
def load(settings: Settings, model: str, name: str | None, tp: int, dp: int, devices: str | None,
         enforce_eager: bool | None, no_wait: bool, **limits: Any) -> None:
    """Load MODEL (a Hugging Face model directory, or `demo`) and serve it.

    Shows a progress bar while the shards load, then the shape and KV capacity.
    Ctrl-C detaches: the load goes on. With --tp 0 --dp 0 the planner picks the shape
    and says why.

    \b
    Examples:
      mgpud load demo --name smol
      mgpud load /models/Llama-3.1-8B --tp 2 --max-model-len 8192
      mgpud load ./my-model --devices cpu:0 --kv-cache-memory 512MiB --no-wait
    """
    args = {"model": model_ref(model), "name": name, "tp": tp, "dp": dp,
            "devices": [d.strip() for d in devices.split(",")] if devices else None,
            **{key: limits[key] for key in ENGINE_LIMIT_KEYS}, "enforce_eager": enforce_eager,
            "wait": not no_wait}
    start = time.monotonic()
    result = load_following(settings, args)
    took = time.monotonic() - start

    def words(reply: dict[str, Any]) -> str:
        m = from_wire(ModelRecord, reply)
        return format_background(m) if no_wait else format_loaded(m, took)
    settings.say(result, words)


def load_following(settings: Settings, args: dict[str, Any]) -> dict[str, Any]:
    """Send `load` and draw its progress; the daemon's reply (the model's description)."""
    label = args["name"] or Path(args["model"]).name or args["model"]
    with settings.client() as client:
        stream = client.stream("load", **args)
        view = ProgressView(f"loading {label}", for_script=settings.json)
        return follow(stream, view, f"the daemon keeps loading {label}; follow it with `mgpud ps`")


def model_ref(model: str) -> str:
    """The daemon runs elsewhere (another cwd, maybe another user): send absolute paths."""
    path = Path(model).expanduser()
    return str(path.resolve()) if model != "demo" and path.exists() else model


def format_loaded(m: ModelRecord, seconds: float) -> str:
    length = m.stats.max_model_len if m.stats else None
    lines = [f"{m.name} {state(m.state)} in {seconds:.1f} s: {_shape(m)}"
             + (f", max_model_len {length:,}" if length else "")]
    return "\n".join(lines + _replica_lines(m) + auto_lines(m) + _reasons(m))


def _replica_lines(m: ModelRecord) -> list[str]:
    stats = m.stats
    return [_replica_line(r, stats.max_model_len) for r in stats.replicas] if stats else []


def _replica_line(r: ReplicaFigures, max_model_len: int | None) -> str:
    """What one replica holds: its devices, weights and KV cache per rank, KV capacity."""
    blocks = r.num_kv_blocks or 0
    capacity = f"{blocks:,} blocks"
    if blocks and r.block_size:
        tokens = blocks * r.block_size
        capacity = f"{tokens:,} tokens"
        if max_model_len:
            capacity += f", {tokens // max_model_len:,} sequences of {max_model_len:,}"
    return (f"  replica {r.index} on {','.join(r.devices)}: weights {_per_rank(r.weight_bytes_per_rank)}, "
            f"KV cache {fmt_bytes(r.kv_bytes_per_rank)} per rank = {capacity}")


def format_background(m: ModelRecord) -> str:
    lines = [f"loading {m.name} in the background: {_shape(m)}; follow it with `mgpud ps`"]
    return "\n".join(lines + auto_lines(m) + _reasons(m))


def _shape(m: ModelRecord) -> str:
    where = f" on {', '.join(m.devices)}" if m.devices else ""  # none yet early in a background load
    return f"tp={m.tp} x dp={m.dp}{where}"


def _per_rank(sizes: list[int]) -> str:
    if len(set(sizes)) == 1:
        return f"{fmt_bytes(sizes[0])} per rank"
    return "/".join(map(fmt_bytes, sizes)) + " on its ranks"


def loaded_summary(m: ModelRecord) -> str:
    """A loaded model in a line (and the planner's choices under it), for commands that go on."""
    return "\n".join([f"{m.name}: {_shape(m)}", *auto_lines(m)])


def auto_lines(m: ModelRecord) -> list[str]:
    """What the planner chose where the load left it at 0: "auto tp=1, auto dp=2"."""
    return ["  " + ", ".join(f"auto {k}={getattr(m, k)}" for k in m.auto)] if m.auto else []


def _reasons(m: ModelRecord) -> list[str]:
    return ["  why this shape:"] + [f"    - {r}" for r in m.reasons] if m.reasons else []


@click.command()
@schema_argument("unload", "name", "name", shell_complete=complete_model_names)
@click.option("--force", is_flag=True, help="Cancel running generations instead of waiting for them.")
@global_options()
@pass_settings
def unload(settings: Settings, name: str, force: bool) -> None:
    """Stop serving NAME and free its devices (`mgpud stop NAME` says the same). New
    requests are refused at once; running generations finish first unless --force cancels them.

    \b
    Examples:
      mgpud unload smol
      mgpud unload smol --force
    """
    cancelled = " (running generations cancelled)" if force else ""
    settings.answer("unload", lambda r: f"unloaded {r['name']}{cancelled}", name=name, force=force)


@click.command()
@schema_argument("reconfigure", "name", "name", shell_complete=complete_model_names)
@schema_option("reconfigure", "tp", *TP_FLAGS, help="New tensor-parallel degree.")
@schema_option("reconfigure", "dp", *DP_FLAGS, help="New number of replicas.")
@schema_option("reconfigure", "enable_expert_parallel", "--enable-expert-parallel/--no-enable-expert-parallel",
               "--ep/--no-ep", help="MoE models: whole experts on ranks, or every expert sharded.")
@global_options()
@pass_settings
def scale(settings: Settings, name: str, tp: int | None, dp: int | None, enable_expert_parallel: bool | None) -> None:
    """Change NAME's shape while it serves (live reshard): replicas roll one by one, or new
    requests wait in the queue while it reshards; none is dropped. Ctrl-C detaches.

    \b
    Examples:
      mgpud scale smol --dp 2
      mgpud scale smol --tp 3 --dp 1
      mgpud scale qwen3-moe --ep
    """
    if tp is None and dp is None and enable_expert_parallel is None:
        raise click.UsageError("give --tp, --dp, --ep/--no-ep or several")
    with settings.client() as client:
        stream = client.stream("reconfigure", name=name, tp=tp, dp=dp, enable_expert_parallel=enable_expert_parallel)
        view = ProgressView(f"reshaping {name}", for_script=settings.json)
        result = follow(stream, view, f"the daemon keeps reshaping {name}; follow it with `mgpud ps`")
    settings.say(result, format_rescaled)


def format_rescaled(result: dict[str, Any]) -> str:
    """The shape before and after, how long it took, and the replicas it has now."""
    before, after, m = result["from"], result["to"], from_wire(ModelRecord, result["model"])
    summary = (f"{m.name}: tp={before['tp']} x dp={before['dp']} -> tp={after['tp']} x dp={after['dp']} "
               f"in {result['duration_s']:.1f} s; new requests held for {1000 * result['held_s']:.0f} ms")
    return "\n".join([summary, *_replica_lines(m)])


COMMANDS = (load, unload, scale)
