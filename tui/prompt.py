"""The prompt box: send a prompt to a model and watch its tokens stream in."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from mgpud.ipc import AsyncClient, AsyncStream, MgpudError

from . import render
from .modals import report_failure

MAX_TOKENS = 128


class PromptScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, client: AsyncClient, model: str) -> None:
        super().__init__()
        self.client = client
        self.model_name = model
        self._stream: AsyncStream | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="prompt") as dialog:
            dialog.border_title = f"Generate with {self.model_name}"
            yield Input(placeholder="a prompt; Enter sends", id="prompt", compact=True)
            with Horizontal(classes="options"):
                yield Label("max tokens")
                yield Input(str(MAX_TOKENS), type="integer", id="max_tokens", compact=True)
                yield Label("temperature")
                yield Input("0", type="number", id="temperature", compact=True)
                yield Checkbox("chat template", value=True, id="chat", compact=True)
            with VerticalScroll(id="output"):
                yield Static(id="text")
            yield Label(id="stats")
            with Horizontal(classes="buttons"):
                yield Button("Send", id="send", variant="primary", compact=True)
                yield Button("Stop", id="stop", compact=True)
                yield Button("Close", id="close", compact=True)

    @on(Input.Submitted)
    @on(Button.Pressed, "#send")
    def _send(self) -> None:
        prompt = self.query_one("#prompt", Input).value
        if not prompt.strip() or self._stream is not None:
            return
        self.query_one("#text", Static).update("")
        self.query_one("#stats", Label).update("waiting for the first token…")
        self.run_worker(self._generate(self._request(prompt)), group="generate", exclusive=True)

    def _request(self, prompt: str) -> dict[str, Any]:
        max_tokens = self.query_one("#max_tokens", Input).value
        temperature = self.query_one("#temperature", Input).value
        request: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": int(max_tokens) if max_tokens.isdigit() and int(max_tokens) > 0 else MAX_TOKENS,
            "temperature": _float(temperature),
        }
        if self.query_one("#chat", Checkbox).value:
            request["messages"] = [{"role": "user", "content": prompt}]
        else:
            request["prompt"] = prompt
        return request

    async def _generate(self, request: dict[str, Any]) -> None:
        text = self.query_one("#text", Static)
        output = self.query_one("#output", VerticalScroll)
        pieces: list[str] = []
        try:
            self._stream = stream = self.client.stream("generate", **request)
            async for frame in stream:
                pieces.append(frame.get("text", ""))
                text.update("".join(pieces))
                output.scroll_end(animate=False)
        except MgpudError as exc:
            report_failure(self, f"generate with {self.model_name}", exc)
            self.query_one("#stats", Label).update(f"failed: {exc.message}")
            return
        finally:
            self._stream = None
        self.query_one("#stats", Label).update(_summary(stream.result or {}))

    @on(Button.Pressed, "#stop")
    def _stop(self) -> None:
        if self._stream is not None:
            self.app.run_worker(_cancel(self._stream), group="cancel")

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self._stop()  # the screen's worker dies with it; the daemon must hear of it too
        self.dismiss()


async def _cancel(stream: AsyncStream) -> None:
    try:
        await stream.cancel()
    except MgpudError:
        pass  # the daemon is gone: nothing left to cancel


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _summary(result: dict[str, Any]) -> str:
    usage = result.get("usage") or {}
    timings = result.get("timings") or {}
    return (f"{usage.get('completion_tokens', '?')} tokens, TTFT {render.millis(timings.get('ttft_ms'))} ms, "
            f"{render.rate(timings.get('decode_tokens_per_s'))} tok/s, finish: {result.get('finish_reason', '?')}")
