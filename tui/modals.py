"""The dialogs: load, scale, unload, and help (generated from the live key bindings).

Load and scale stay open while the daemon works and show its progress; their command
runs in a worker owned by the app, so that Escape only hides the dialog: the command
carries on and its outcome arrives as a notification.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Button, Input, Label, ProgressBar, Static

from mgpud.ipc import AsyncClient, MgpudError
from mgpud.records import LoadProgress, ModelRecord, from_wire

from . import render
from .events import describe
from .state import Snapshot, load_fraction
from .verdict import Verdict, judge, pending

PLAN_DELAY = 0.3  # seconds of quiet typing before the planner is asked


def report_failure(node: DOMNode, action: str, exc: MgpudError) -> None:
    """A daemon error as a notification, in the daemon's words."""
    node.notify(exc.message, title=f"{action} failed ({exc.code})", severity="error", timeout=10, markup=False)


class VerdictView(Static):
    def show(self, verdict: Verdict) -> None:
        mark, style = {True: ("✓", "green"), False: ("✗", "bold red"), None: ("…", "yellow")}[verdict.fits]
        text = Text.assemble((f"{mark} {verdict.headline}", style))
        for line in verdict.details:
            text.append(f"\n  {line}", style="grey70")
        self.update(text)


def _field(label: str, widget: Input) -> ComposeResult:
    yield Label(label)
    yield widget


class _Dialog(ModalScreen[None]):
    """A form, the planner's verdict on it, and a command with progress."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]
    CONFIRM = ""  # the confirm button's label
    HINT = ""

    def __init__(self, client: AsyncClient, heading: str) -> None:
        super().__init__()
        self.client = client
        self.heading = heading
        self._timer: Timer | None = None
        self._plan: tuple[tuple[tuple[str, Any], ...], dict[str, Any]] | None = None  # (asked, reply)

    def form(self) -> ComposeResult:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as dialog:
            dialog.border_title = self.heading
            with Grid(classes="form"):
                yield from self.form()
            yield Label(f"{self.HINT} Enter confirms, Esc closes.", classes="hint")
            yield VerdictView(id="verdict")
            yield ProgressBar(total=None, show_eta=False, id="progress")
            yield Label(id="progress-text")
            with Horizontal(classes="buttons"):
                yield Button(self.CONFIRM, id="confirm", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self._replan()

    def number(self, input_id: str) -> int | None:
        """The whole number in an input; None when empty or not a number."""
        text = self.query_one(f"#{input_id}", Input).value.strip()
        return int(text) if text.isdigit() else None

    # -- the planner's verdict ------------------------------------------------------------

    def plan_request(self) -> tuple[tuple[str, Any], ...]:
        """The `plan` arguments to ask the planner with, as sorted (key, value) pairs."""
        raise NotImplementedError

    def shape(self) -> tuple[int, int]:
        return self.number("tp") or 0, self.number("dp") or 0

    @on(Input.Changed)
    def _replan(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(PLAN_DELAY, self._ask_planner)

    def _ask_planner(self) -> None:
        asked = self.plan_request()
        if self._plan is not None and self._plan[0] == asked:
            self.query_one(VerdictView).show(judge(self._plan[1], *self.shape()))
            return
        self.query_one(VerdictView).show(pending())
        self.run_worker(self._fetch_plan(asked), group="plan", exclusive=True)

    async def _fetch_plan(self, asked: tuple[tuple[str, Any], ...]) -> None:
        try:
            plan = await self.client.call("plan", **{k: v for k, v in asked if v is not None})
        except MgpudError as exc:
            self.query_one(VerdictView).show(Verdict(None, "the planner cannot judge this", (exc.message,)))
            return
        self._plan = (asked, plan)
        self.query_one(VerdictView).show(judge(plan, *self.shape()))

    # -- the command ----------------------------------------------------------------------

    def command(self) -> Coroutine[Any, Any, None] | None:
        """The coroutine that carries out the form, or None when the form is not ready."""
        raise NotImplementedError

    @on(Input.Submitted)
    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        if self.has_class("-running"):
            return
        work = self.command()
        if work is not None:
            self._set_busy(True)
            self.app.run_worker(work, group="commands", name=self.CONFIRM.lower())

    @on(Button.Pressed, "#cancel")
    def action_close(self) -> None:
        self.dismiss()

    @property
    def is_open(self) -> bool:
        return self in self.app.screen_stack

    def _set_busy(self, running: bool) -> None:
        if not self.is_open:
            return
        self.set_class(running, "-running")
        self.query_one(".form").disabled = running
        self.query_one("#confirm", Button).disabled = running
        self.query_one("#cancel", Button).label = "Hide" if running else "Cancel"

    def progress(self, fraction: float | None, text: str) -> None:
        if self.is_open:
            self.query_one(ProgressBar).update(total=None if fraction is None else 1.0, progress=fraction or 0.0)
            self.query_one("#progress-text", Label).update(text)

    def finished(self, ok: bool) -> None:
        """Close after success; after a failure, let the form be corrected."""
        if not self.is_open:
            return
        if ok:
            self.dismiss()
        else:
            self._set_busy(False)


class LoadModal(_Dialog):
    CONFIRM = "Load"
    HINT = "tp, dp: 0 = the planner chooses."

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client, "Load a model")

    def form(self) -> ComposeResult:
        yield from _field("Model", Input("demo", placeholder="demo, or a model directory", id="model", compact=True))
        yield from _field("Name", Input(placeholder="default: the directory's name", id="name", compact=True))
        yield from _field("TP", Input("0", type="integer", id="tp", compact=True))
        yield from _field("DP", Input("0", type="integer", id="dp", compact=True))
        yield from _field("Max len", Input(placeholder="the daemon's default", type="integer",
                                           id="max_model_len", compact=True))

    def plan_request(self) -> tuple[tuple[str, Any], ...]:
        model = self.query_one("#model", Input).value.strip()
        return (("max_model_len", self.number("max_model_len")), ("model", model))

    def command(self) -> Coroutine[Any, Any, None] | None:
        model, max_model_len = self.query_one("#model", Input).value.strip(), self.number("max_model_len")
        if not model:
            self.notify("name a model directory, or demo", severity="warning")
            return None
        tp, dp = self.shape()
        name = self.query_one("#name", Input).value.strip() or None
        return self._load({"model": model, "name": name, "tp": tp, "dp": dp, "max_model_len": max_model_len})

    async def _load(self, args: dict[str, Any]) -> None:
        try:
            stream = self.client.stream("load", **args)
            async for frame in stream:
                if "phase" in frame:  # the others are replica events, which telemetry shows
                    self._show_progress(from_wire(LoadProgress, frame))
        except MgpudError as exc:
            report_failure(self.app, f"load {args['name'] or args['model']}", exc)
            self.finished(False)
            return
        assert stream.result is not None  # the frames end only with the result, or an error
        model = from_wire(ModelRecord, stream.result)
        self.app.notify(f"tp {model.tp} x dp {model.dp} on {', '.join(model.devices)}", title=f"{model.name} is ready")
        self.finished(True)

    def _show_progress(self, p: LoadProgress) -> None:
        text = f"{p.phase}: {p.message}"
        if p.tensors_total:
            text += f" {p.tensors_done}/{p.tensors_total} tensors"
        if p.bytes_total:
            text += f", {render.size(p.bytes_done)}/{render.size(p.bytes_total)}"
        if p.seconds:
            text += f"\n{p.shares()}"
        self.progress(p.bytes_done / p.bytes_total if p.bytes_total else None, text)


class ScaleModal(_Dialog):
    CONFIRM = "Scale"
    HINT = "Serving goes on while it reshapes."

    def __init__(self, client: AsyncClient, model: ModelRecord) -> None:
        super().__init__(client, f"Scale {model.name}: now tp {model.tp} x dp {model.dp}")
        self.model = model

    def form(self) -> ComposeResult:
        yield from _field("TP", Input(str(self.model.tp), type="integer", id="tp", compact=True))
        yield from _field("DP", Input(str(self.model.dp), type="integer", id="dp", compact=True))

    def plan_request(self) -> tuple[tuple[str, Any], ...]:
        # Named: the daemon counts this model's own devices as available for its new shape.
        return (("name", self.model.name),)

    def command(self) -> Coroutine[Any, Any, None] | None:
        tp, dp = self.shape()
        if not tp or not dp:
            self.notify("give tp and dp as whole numbers of at least 1", severity="warning")
            return None
        if (tp, dp) == (self.model.tp, self.model.dp):
            self.notify(f"{self.model.name} already runs as tp {tp} x dp {dp}", severity="warning")
            return None
        return self._scale(tp, dp)

    async def _scale(self, tp: int, dp: int) -> None:
        name = self.model.name
        self.progress(None, f"reshaping to tp {tp} x dp {dp}; requests keep being served or held")
        try:
            result = await self.client.call("reconfigure", name=name, tp=tp, dp=dp)
        except MgpudError as exc:
            report_failure(self.app, f"scale {name}", exc)
            self.finished(False)
            return
        took = result.get("duration_s")
        held = result.get("held_s")
        detail = "" if took is None else f" in {took:.1f} s" + ("" if held is None else f", requests held {held:.1f} s")
        self.app.notify(f"now tp {tp} x dp {dp}{detail}", title=f"{name} rescaled")
        self.finished(True)

    def track(self, snapshot: Snapshot) -> None:
        """While resharding: the model's state and its replicas', from telemetry."""
        model = snapshot.model(self.model.name)
        if model is None or not self.has_class("-running"):
            return
        replicas = ", ".join(f"r{r.index} {r.state}" for r in (model.stats.replicas if model.stats else ()))
        self.progress(load_fraction(model), f"{model.state}, tp {model.tp} x dp {model.dp}" +
                      (f": {replicas}" if replicas else ""))

    def note(self, event: dict[str, Any]) -> None:
        """While resharding: the model's lifecycle events."""
        text = describe(event)
        if text is not None and event.get("model") == self.model.name and self.has_class("-running"):
            self.progress(None, text.plain)


class UnloadModal(ModalScreen[bool | None]):
    """Confirm an unload; the result is `force` (True cancels running generations), or
    None to keep the model."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Keep it")]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.model_name = name

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as dialog:
            dialog.border_title = f"Unload {self.model_name}"
            yield Label(f"Unload {self.model_name}? Unload lets running generations finish first; "
                        "Force cancels them.", classes="question")
            with Horizontal(classes="buttons"):
                yield Button("Unload", id="unload", variant="primary", compact=True)
                yield Button("Force", id="force", variant="error", compact=True)
                yield Button("Keep it", id="keep", compact=True)

    def on_mount(self) -> None:
        self.query_one("#unload").focus()

    @on(Button.Pressed)
    def _choose(self, event: Button.Pressed) -> None:
        self.dismiss({"unload": False, "force": True}.get(event.button.id or ""))


def key_rows(screen: Screen[Any]) -> list[tuple[str, str]]:
    """(keys, what they do) for the live bindings of `screen` and of its focused widget that
    explain themselves (a tooltip), widget first; keys that do the same share a row. The
    app's own bindings are Textual's (ctrl+q, ctrl+c), not the dashboard's to explain."""
    rows: dict[str, list[str]] = {}
    for active in screen.active_bindings.values():
        if active.tooltip and active.node is not screen.app:
            rows.setdefault(active.tooltip, []).append(screen.app.get_key_display(active.binding))
    return [(" ".join(keys), what) for what, keys in rows.items()]


class HelpScreen(ModalScreen[None]):
    """The keys of `explained` (the screen it was opened from), then how to read the panels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, explained: Screen[Any]) -> None:
        super().__init__()
        self.explained = explained

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as dialog:
            dialog.border_title = "mgpud top: keys"
            text = Text()
            for keys, what in key_rows(self.explained):
                text.append(f"{keys:>4}  ", style="bold")
                text.append(f"{what}\n")
            text.append("\nMemory bars, per device:\n")
            text.append_text(render.memory_legend(short=False))
            text.append("Sizes in binary units (G = GiB). KV headroom: the share of KV blocks free. "
                        "TTFT: time to first token, ms. – : not known.")
            yield Static(text)
            yield Label(self._closing_hint(), classes="hint")

    def _closing_hint(self) -> str:
        """The hint line, "Esc, ? or q closes.", from this screen's own bindings."""
        *first, last = [self.app.get_key_display(a.binding) for a in self.active_bindings.values()
                        if a.binding.action == "dismiss"]
        listed = f"{', '.join(first)} or {last}" if first else last
        return f"{listed[:1].upper()}{listed[1:]} closes."
