"""`mgpud plan`: which (tp, dp) shapes a model fits in, without weights or a daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mgpud.units import fmt_bytes

from .context import Settings, global_options, pass_settings
from .exits import FAILED, USAGE, CliError
from .output import emit_json, fmt_ms
from .params import SIZE, schema_option

if TYPE_CHECKING:
    from mgpud.engine.planning.planner import Plan, Shape


@click.command()
@click.argument("model")
@click.option("--devices", metavar="SPEC",
              help="NxNAME (8xH100-80GB, 4xL40S-48GB, 2xRTX-4090-24GB; every name in docs/cli.md), NxSIZE "
                   "(4x48GB: a device by its memory alone), cpu:4, or GPU ordinals 0,1 (default: the devices "
                   "found here).")
@click.option("--link", type=click.Choice(["pcie", "nvlink"]),
              help="What connects NxSIZE devices: their all-reduce time then joins the plan.")
@click.option("--device-memory", type=SIZE, help="Memory of each CPU device, e.g. 4GiB.")
@schema_option("plan", "dtype", help="Weights dtype (default bf16 on GPUs, fp32 on CPU).")
@schema_option("plan", "quantization", help="8-bit linear layers, as `mgpud load --quantization`.")
@schema_option("plan", "kv_cache_dtype", help="KV cache dtype, as `mgpud load --kv-cache-dtype`.")
@schema_option("plan", "max_model_len", help="Tokens per sequence (default: the model's).")
@schema_option("plan", "concurrency", default=16, show_default=True,
               help="Sequences of max-model-len each replica must hold at once.")
@schema_option("plan", "memory_utilization", "--gpu-memory-utilization", default=0.9, show_default=True,
               metavar="FRACTION", help="Share of each device's memory the model may use.")
@schema_option("plan", "tp", default=0, show_default=True, help="0 = automatic.")
@schema_option("plan", "dp", default=0, show_default=True, help="0 = automatic.")
@schema_option("plan", "enable_expert_parallel", "--enable-expert-parallel", "--ep")
@global_options("json")
@pass_settings
def plan(settings: Settings, model: str, devices: str | None, link: str | None, device_memory: int | None,
         dtype: str | None,
         quantization: str | None, kv_cache_dtype: str | None, max_model_len: int | None, concurrency: int,
         memory_utilization: float, tp: int, dp: int, enable_expert_parallel: bool | None) -> None:
    """The planner's table for MODEL (a model directory, a config.json, a preset such as
    Llama-3.1-70B, or `demo`): every shape, whether it fits and why, memory and
    all-reduce traffic per device, a decode estimate, the chosen shape and the reasons.
    Needs no daemon and reads no weights. Exits 1 when no shape fits.

    \b
    Examples:
      mgpud plan Llama-3.1-70B --devices 8xH100-80GB --max-model-len 8192
      mgpud plan demo --devices cpu:4
      mgpud plan Llama-3.1-70B --devices 4x48GB --link pcie
      mgpud plan /models/Qwen2.5-72B --quantization fp8 --json | jq .chosen
    """
    from mgpud.engine.hosts.inventory import DeviceSpecError
    from mgpud.engine.exceptions import EngineError
    from mgpud.engine.planning.planner import plan as make_plan

    try:
        result = make_plan(model, devices, dtype=dtype, quantization=quantization,
                           kv_cache_dtype=kv_cache_dtype or "auto", max_model_len=max_model_len,
                           concurrency=concurrency, memory_utilization=memory_utilization, tp=tp, dp=dp,
                           device_memory=device_memory, enable_expert_parallel=bool(enable_expert_parallel),
                           link=link)
    except DeviceSpecError as exc:
        raise CliError(f"--devices: {exc}", USAGE) from None
    except EngineError as exc:
        raise CliError(str(exc)) from None
    if settings.json:
        emit_json(result.to_dict())
    else:
        click.echo(format_table(result))
    if not result.ok:
        click.get_current_context().exit(FAILED)


_COLUMNS = ("", "tp", "dp", "fits", "weights/dev", "KV/token/dev", "KV tokens/replica", "seqs",
            "all-reduce/token", "all-reduce/step", "all-reduce time/step", "tok/s (est.)", "bound", "why")
_RIGHT = {1, 2, 4, 5, 6, 7, 8, 9, 10, 11}  # numeric columns


def format_table(plan: Plan) -> str:
    """The plan as `mgpud plan` prints it: header, aligned table (chosen shape marked *), reasons."""
    columns, cells, right = _COLUMNS, [_row(plan, s) for s in plan.shapes], _RIGHT
    if plan.expert_parallel:  # the MoE layers' all-to-all traffic, after the all-reduce columns
        columns = columns[:11] + ("all-to-all/token",) + columns[11:]
        cells = [row[:11] + (fmt_bytes(s.all_to_all_bytes_per_token),) + row[11:]
                 for row, s in zip(cells, plan.shapes)]
        right = _RIGHT | {12}
    rows = [columns] + cells
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    table = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    return "\n".join(_header(plan) + [""] + table + _trailer(plan))


def _row(plan: Plan, s: Shape) -> tuple[str, ...]:
    rate = f"{s.tokens_per_s:,.0f}" if s.fits and s.tokens_per_s is not None else "-"
    return ("*" if (s.tp, s.dp) == plan.chosen else "", str(s.tp), str(s.dp), "yes" if s.fits else "no",
            fmt_bytes(s.weights_per_device), fmt_bytes(s.kv_bytes_per_token), f"{s.kv_tokens:,}",
            str(s.sequences), fmt_bytes(s.allreduce_bytes_per_token), fmt_bytes(s.allreduce_bytes_per_step),
            fmt_ms(None if s.allreduce_s_per_step is None else 1000 * s.allreduce_s_per_step), rate,
            s.bound or "-", s.why)


def _header(plan: Plan) -> list[str]:
    active = f", {plan.active_params / 1e9:.2f} B active" if plan.active_params != plan.params else ""
    placement = ", experts placed whole on ranks (expert parallel)" if plan.expert_parallel else ""
    weights = f"{plan.quantization} (linear layers; {plan.dtype} the rest)" if plan.quantization else plan.dtype
    return [f"{plan.model} ({plan.architecture}, {plan.params / 1e9:.2f} B parameters{active}{placement}) on "
            f"{plan.devices} ({fmt_bytes(plan.device_memory)} each)",
            f"weights {weights}, KV {plan.kv_dtype}, max_model_len {plan.max_model_len}, "
            f"concurrency {plan.concurrency} per replica, memory utilization {plan.memory_utilization:.2f}, "
            f"block size {plan.block_size}",
            f"budget per device for weights + KV: {fmt_bytes(plan.budget)}"]


def _trailer(plan: Plan) -> list[str]:
    chosen = f"tp={plan.chosen[0]}, dp={plan.chosen[1]} (marked *)" if plan.chosen else "none"
    lines = ["", f"Chosen: {chosen}", "Reasons:"] + [f"  - {r}" for r in plan.reasons]
    if plan.impossible:
        lines += ["Impossible:"] + [f"  - tp={tp}: {why}" for tp, why in plan.impossible.items()]
    return lines + ["Notes:"] + [f"  - {n}" for n in plan.notes]


COMMANDS = (plan,)
