"""`mgpud plan`: which (tp, dp) shapes a model fits in, without weights or a daemon."""

from __future__ import annotations

import click

from .context import Settings, global_options, pass_settings
from .errors import FAILED, USAGE, CliError
from .output import emit_json
from .params import SIZE

DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "float32", "bfloat16", "float16")


@click.command()
@click.argument("model")
@click.option("--devices", metavar="SPEC",
              help="8xH100-80GB, 4xA100-40GB, cpu:4, or GPU ordinals 0,1 (default: the devices found here).")
@click.option("--device-memory", type=SIZE, help="Memory of each CPU device, e.g. 4GiB.")
@click.option("--dtype", type=click.Choice(DTYPES), help="Weights dtype (default bf16 on GPUs, fp32 on CPU).")
@click.option("--max-model-len", type=click.IntRange(min=1), help="Tokens per sequence (default: the model's).")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
              help="Sequences of max-model-len each replica must hold at once.")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True), default=0.9,
              show_default=True, metavar="FRACTION", help="Share of each device's memory the model may use.")
@click.option("--tp", type=click.IntRange(0, 1024), default=0, show_default=True, help="0 = automatic.")
@click.option("--dp", type=click.IntRange(0, 1024), default=0, show_default=True, help="0 = automatic.")
@global_options("json")
@pass_settings
def plan(settings: Settings, model: str, devices: str | None, device_memory: int | None, dtype: str | None,
         max_model_len: int | None, concurrency: int, gpu_memory_utilization: float, tp: int, dp: int) -> None:
    """The planner's table for MODEL (a model directory, a config.json, a preset such as
    Llama-3.1-70B, or `demo`): every shape, whether it fits and why, memory and
    all-reduce traffic per device, a decode estimate, the chosen shape and the reasons.
    Needs no daemon and reads no weights. Exits 1 when no shape fits.

    \b
    Examples:
      mgpud plan Llama-3.1-70B --devices 8xH100-80GB --max-model-len 8192
      mgpud plan demo --devices cpu:4
      mgpud plan /models/Qwen2.5-72B --dtype fp8 --json | jq .chosen
    """
    from mgpud.engine.devices import DeviceSpecError
    from mgpud.engine.errors import EngineError
    from mgpud.engine.planner import format_table, plan as make_plan

    try:
        result = make_plan(model, devices, dtype=dtype, max_model_len=max_model_len, concurrency=concurrency,
                           memory_utilization=gpu_memory_utilization, tp=tp, dp=dp, device_memory=device_memory)
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


COMMANDS = (plan,)
