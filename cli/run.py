"""`mgpud run NAME_OR_PATH`: Ollama's habit: serve the model if it is not served yet, then chat."""

from __future__ import annotations

from typing import Any

import click

from mgpud.records import ModelRecord, from_wire

from .chat import converse
from .context import Settings, complete_model_names, global_options, pass_settings
from .exits import note
from .generate import sampling_options
from .lifecycle import DP_FLAGS, TP_FLAGS, load_following, loaded_summary, model_ref
from .params import schema_option


@click.command()
@click.argument("model", metavar="NAME_OR_PATH", shell_complete=complete_model_names)
@schema_option("load", "name", help="Name to serve it under when it is loaded here (default: the directory's name).")
@schema_option("load", "tp", *TP_FLAGS, default=0, show_default=True, help="Tensor-parallel degree of a load.")
@schema_option("load", "dp", *DP_FLAGS, default=0, show_default=True, help="Replicas of a load.")
@click.option("--system", metavar="TEXT", help="A system message that opens the conversation.")
@click.option("--stats", is_flag=True, help="Print tokens, TTFT and tokens/s after each reply.")
@sampling_options
@global_options("runtime_dir", "timeout")
@pass_settings
def run(settings: Settings, model: str, name: str | None, tp: int, dp: int, system: str | None, stats: bool,
        **options: Any) -> None:
    """Chat with a model, loading it first unless the daemon serves it already.

    NAME_OR_PATH is a served model's name, a model directory, a Hugging Face id found in
    the local cache (`mgpud pull` fetches one), or `demo`. A model the daemon already
    serves from that directory or id is used as it is; otherwise it is loaded with the
    shape the planner picks (or --tp/--dp) and stays loaded after the chat.

    \b
    Examples:
      mgpud run demo
      mgpud run HuggingFaceTB/SmolLM2-135M-Instruct -tp 2
      mgpud run smol --temperature 0.7
    """
    served = _served_as(settings, model, name)
    if served is None:
        args = {"model": model_ref(model), "name": name, "tp": tp, "dp": dp, "wait": True}
        loaded = from_wire(ModelRecord, load_following(settings, args))
        note(loaded_summary(loaded))
        served = loaded.name
    converse(settings, served, system, stats, options)


def _served_as(settings: Settings, model: str, name: str | None) -> str | None:
    """The name under which the daemon serves `model` already (by name, or its directory or id)."""
    with settings.client() as client:
        models = [from_wire(ModelRecord, m) for m in client.call("models")["models"]]
    ref = model_ref(model)
    for m in models:
        if m.state != "failed" and (m.name == (name or model) or (name is None and m.model == ref)):
            return m.name
    return None


COMMANDS = (run,)
