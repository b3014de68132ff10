"""`mgpud generate`, and the streaming and sampling options that `mgpud chat` shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from mgpud.ipc import Client
from mgpud.ipc.schema import SAMPLING_KEYS

from .context import Settings, complete_model_names, global_options, pass_settings
from .exits import INTERRUPTED, note
from .output import fmt_ms, fmt_rate
from .params import F, schema_argument, schema_option

# The command line's words for the sampling options: defaults the user cannot see in the schema.
_SAMPLING_HELP = {
    "max_tokens": "Most tokens to generate (default 256, fewer where the context ends; "
                  "more than the context leaves is refused).",
    "temperature": "0 = greedy (the default).",
    "top_p": "Nucleus sampling mass.",
    "top_k": "Sample among the k likeliest; 0 = no limit.",
    "seed": "Seed for reproducible sampling.",
    "stop": "Stop at this text (not printed); repeatable.",
    "ignore_eos": "Keep going past the end-of-sequence token.",
}


def sampling_options(fn: F) -> F:
    """An option per sampling argument of `generate` (SAMPLING_KEYS), each left unset by default."""
    for key in reversed(SAMPLING_KEYS):
        fn = schema_option("generate", key, help=_SAMPLING_HELP.get(key))(fn)
    return fn


def sampling_args(options: dict[str, Any]) -> dict[str, Any]:
    """The generate arguments among a command's options; unset ones left to the daemon."""
    args = {k: options[k] for k in SAMPLING_KEYS}
    # A repeatable option (--stop) gives a tuple, empty when not given; the protocol wants a list or nothing.
    return {k: (list(v) or None) if isinstance(v, tuple) else v for k, v in args.items()}


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
@schema_argument("generate", "model", "name", shell_complete=complete_model_names)
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
    settings.say(result, lambda r: r["text"] if no_stream else "")  # streamed: end its line
    if not settings.json:
        note(summary(result))
    if interrupted:
        click.get_current_context().exit(INTERRUPTED)


COMMANDS = (generate,)
