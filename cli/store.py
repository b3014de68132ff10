"""`mgpud list` (the models on disk the daemon could load) and `mgpud pull ORG/NAME`
(a download into the Hugging Face cache)."""

from __future__ import annotations

from typing import Any

import click

from mgpud.units import fmt_bytes

from .context import Settings, global_options, pass_settings
from .exits import CliError
from .output import table

HEADERS = ("MODEL", "FROM", "SIZE", "ARCHITECTURE", "FITS HERE", "PATH")


@click.command("list")
@global_options()
@pass_settings
def list_models(settings: Settings) -> None:
    """The models on disk that `mgpud load` (and `run`) can name: the demo in the mgpud
    cache, the Hugging Face cache (by ORG/NAME) and the daemon's model roots, with their
    size, architecture and whether the planner finds a shape for them on the daemon's
    devices. The daemon reads its own disk: run it where the daemon is.

    \b
    Examples:
      mgpud list
      mgpud list --json | jq '.models[] | select(.fits) | .ref'
    """
    settings.answer("catalog", format_catalog)


def format_catalog(reply: dict[str, Any]) -> str:
    models = reply["models"]
    if not models:
        return "no model on disk; fetch one with `mgpud pull ORG/NAME` (or `mgpud load demo`)"
    text = table(HEADERS, [_row(m) for m in models], frozenset({2}))
    roots = reply.get("roots")
    return text + (f"\nmodel roots: {', '.join(roots)}" if roots else "")


def _row(m: dict[str, Any]) -> list[str]:
    return [m["ref"], m["source"], fmt_bytes(m["size_bytes"]), m["architecture"] or "-", _fits(m), m["path"]]


def _fits(m: dict[str, Any]) -> str:
    if m["fits"] is None:
        return "?"
    if not m["fits"]:
        return click.style("no", fg="red")
    tp, dp = m["shape"]
    return click.style(f"yes (tp={tp} x dp={dp})", fg="green")


@click.command()
@click.argument("repo_id", metavar="ORG/NAME")
@global_options("json")
@pass_settings
def pull(settings: Settings, repo_id: str) -> None:
    """Download ORG/NAME from the Hugging Face hub into the local Hugging Face cache
    ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub): its safetensors
    weights, JSON configs and tokenizer files only, with a progress bar. Then `mgpud load
    ORG/NAME` finds it offline (a daemon running as another user needs the same cache:
    set HF_HUB_CACHE for both). A gated model needs `hf auth login` first.

    \b
    Examples:
      mgpud pull HuggingFaceTB/SmolLM2-135M-Instruct
      HF_HUB_CACHE=/srv/hf mgpud pull Qwen/Qwen2.5-0.5B-Instruct
    """
    from mgpud.engine.exceptions import ModelLoadError
    from mgpud.engine.store.hub import is_repo_id
    from mgpud.engine.store.hub import pull as download

    if not is_repo_id(repo_id):
        raise click.UsageError(f"{repo_id!r} is not a Hugging Face id such as HuggingFaceTB/SmolLM2-135M-Instruct")
    try:
        path = download(repo_id)
    except ModelLoadError as exc:
        raise CliError(str(exc)) from None
    settings.say({"ref": repo_id, "path": str(path)}, lambda r: f"pulled {r['ref']} into {r['path']}; "
                 f"serve it with `mgpud load {r['ref']}`")


COMMANDS = (list_models, pull)
