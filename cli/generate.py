"""`mgpud generate`, and the streaming and sampling options that `mgpud chat` shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mgpud.ipc import Client

from .context import Settings, complete_model_names, global_options, pass_settings
from .errors import INTERRUPTED, note
from .output import emit_json, fmt_ms, fmt_rate

F = TypeVar("F", bound=Callable[..., Any])

SAMPLING_OPTIONS = (
    click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens to generate (default 256)."),
    click.option("--temperature", type=click.FloatRange(0, 100), help="0 = greedy (the default)."),
    click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling mass."),
    click.option("--top-k", type=click.IntRange(min=0), help="Sample among the k likeliest; 0 = no limit."),
    click.option("--seed", type=click.IntRange(min=0), help="Seed for reproducible sampling."),
    click.option("--stop", multiple=True, metavar="TEXT", help="Stop at this text (not printed); repeatable."),
    click.option("--ignore-eos", is_flag=True, default=None, help="Keep going past the end-of-sequence token."),
)
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")


def sampling_options(fn: F) -> F:
    for option in reversed(SAMPLING_OPTIONS):
        fn = option(fn)
    return fn


def sampling_args(options: dict[str, Any]) -> dict[str, Any]:
    """The generate arguments among a command's options; unset ones left to the daemon."""
    args = {k: options[k] for k in SAMPLING_KEYS}
    args["stop"] = list(args["stop"]) or None
    return args


def stream_generation(client: Client, args: dict[str, Any],
                      show: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    """Run one generation, passing each piece of text to `show` as it comes; its result,
    and whether Ctrl-C interrupted it.

    Ctrl-C cancels it on the daemon; the result then holds what came so far, with
    finish_reason "cancelled" and no usage or timings."""
    stream = client.stream("generate", **args)
    pieces: list[str] = []
    token_ids: list[int] = []
    try:
        for frame in stream:
            pieces.append(frame["text"])
            token_ids += frame["token_ids"]
            show(frame["text"])
    except KeyboardInterrupt:
        stream.cancel()
        return {"model": args["model"], "text": "".join(pieces), "token_ids": token_ids,
                "finish_reason": "cancelled", "usage": None, "timings": None}, True
    assert stream.result is not None
    return stream.result, False


def summary(result: dict[str, Any]) -> str:
    """One line of figures for stderr: tokens, why it stopped, TTFT, speed."""
    if result["usage"] is None:
        return f"[cancelled on the daemon after {len(result['token_ids'])} tokens]"
    usage, timings = result["usage"], result["timings"]
    return (f"[{usage['completion_tokens']} tokens ({usage['prompt_tokens']} in prompt), "
            f"finish: {result['finish_reason']}, TTFT {fmt_ms(timings['ttft_ms'])}, "
            f"{fmt_rate(timings['decode_tokens_per_s'])}, total {fmt_ms(timings['total_ms'])}]")


def echo_now(text: str) -> None:
    click.echo(text, nl=False)
    sys.stdout.flush()


@click.command()
@click.argument("name", shell_complete=complete_model_names)
@click.argument("prompt")
@sampling_options
@click.option("--no-stream", is_flag=True, help="Print the text once it is complete.")
@global_options()
@pass_settings
def generate(settings: Settings, name: str, prompt: str, no_stream: bool, **options: Any) -> None:
    """Generate text from PROMPT (`-` reads it from stdin) with model NAME, streaming it
    to stdout; figures go to stderr. Ctrl-C cancels the request on the daemon.

    \b
    Examples:
      mgpud generate smol "Write a haiku about GPUs" --max-tokens 40
      echo "Once upon a time" | mgpud generate smol - --temperature 0.8 --seed 1
      mgpud generate smol "2+2=" --json | jq -r .text
    """
    text = sys.stdin.read() if prompt == "-" else prompt
    # --json prints one object at the end, but still streams so that Ctrl-C keeps the partial text.
    args = {"model": name, "prompt": text, **sampling_args(options), "stream": not no_stream}
    show = (lambda _text: None) if settings.json or no_stream else echo_now
    with settings.client() as client:
        result, interrupted = stream_generation(client, args, show)
    if settings.json:
        emit_json(result)
    else:
        click.echo(result["text"] if no_stream else "")
        note(summary(result))
    if interrupted:
        click.get_current_context().exit(INTERRUPTED)


COMMANDS = (generate,)
