"""The main screen: what the daemon runs, and the keys that act on it."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from mgpud.ipc import AsyncClient, MgpudError

from .events import describe
from .feed import follow
from .messages import ConnectionChanged, DaemonEvent, SnapshotArrived
from .modals import HelpScreen, LoadModal, ScaleModal, UnloadModal, report_failure
from .prompt import PromptScreen
from .state import Snapshot
from .widgets import (COMPACT, Advice, Banner, DevicesTable, EventLog, ModelsTable, StatusBar, Throughput,
                      mode_for)

DOWN_HINT = "The dashboard reconnects by itself when the daemon is back."


class Dashboard(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        # The tooltips are the help screen's text (and the footer's on hover).
        Binding("l", "load", "Load",
                tooltip="load a model: path or demo, name, tp, dp, max length; the planner judges the shape"),
        Binding("s", "scale", "Scale", tooltip="scale the selected model to another tp x dp while it serves"),
        Binding("u", "unload", "Unload",
                tooltip="unload the selected model (after its running generations, or forced)"),
        Binding("g", "generate", "Generate",
                tooltip="send a prompt to the selected model and watch the tokens stream"),
        Binding("question_mark", "help", "Help", key_display="?", tooltip="this help"),
        Binding("q", "quit", "Quit", tooltip="quit (the daemon keeps running)"),
    ]

    def __init__(self, client: AsyncClient) -> None:
        super().__init__()
        self.client = client
        self.snapshot: Snapshot | None = None
        self.connected: bool | None = None  # None until the daemon is first heard or missed
        self.down_reason = ""

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Banner(id="banner")
        with Vertical(id="body"):
            yield DevicesTable()
            yield ModelsTable()
            yield Advice(id="advice")
            with Horizontal(id="lower"):
                yield Throughput()
                yield EventLog()
        yield Footer()

    def on_mount(self) -> None:
        self._show_status(None)
        self.run_worker(follow(self.client, self.post_message), name="telemetry", group="telemetry",
                        exclusive=True)

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(mode_for(event.size.width) == COMPACT, "-compact")

    # -- what the telemetry worker posts --------------------------------------------------

    async def on_snapshot_arrived(self, message: SnapshotArrived) -> None:
        snapshot, previous = message.snapshot, self.snapshot
        if self.connected is None:
            self.connected = True  # telemetry is the daemon heard, even if it beat the connection notice
        if previous is not None and previous.daemon.pid != snapshot.daemon.pid:
            self._note(time.time(), f"the daemon restarted: pid {previous.daemon.pid} -> {snapshot.daemon.pid}",
                      "yellow")
        self._show_status(snapshot)
        self.query_one(DevicesTable).show(snapshot.devices)
        self.query_one(ModelsTable).show(snapshot.models)
        self.query_one(Advice).say([line for m in snapshot.models for line in m.advice])
        await self.query_one(Throughput).show(snapshot)
        self.snapshot = snapshot  # last: a test that sees it may take a picture
        if isinstance(self.app.screen, ScaleModal):
            self.app.screen.track(snapshot)

    def on_daemon_event(self, message: DaemonEvent) -> None:
        text = describe(message.data)
        if text is not None:
            self.query_one(EventLog).add(message.at, text)
        if isinstance(self.app.screen, ScaleModal):
            self.app.screen.note(message.data)

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        self.connected, self.down_reason = message.connected, message.reason
        self.query_one("#body").set_class(not message.connected, "-stale")
        if message.connected:
            self._note(message.at, f"connected to the daemon at {self.client.runtime_dir}", "green")
        else:
            self._note(message.at, f"daemon unreachable: {message.reason}", "bold red")
        self._show_status(self.snapshot)

    def _show_status(self, snapshot: Snapshot | None) -> None:
        daemon = snapshot.daemon if snapshot else None
        self.query_one(StatusBar).show(daemon, str(self.client.runtime_dir), self.connected)
        banner = None
        if self.connected is False:
            banner = f"DAEMON UNREACHABLE: {self.down_reason} {DOWN_HINT}"
        elif daemon is not None and daemon.state == "stopping":
            banner = "DAEMON STOPPING: new work is refused; running generations are finishing."
        self.query_one(Banner).say(banner)

    def _note(self, at: float, text: str, style: str) -> None:
        self.query_one(EventLog).add(at, Text(text, style=style))

    # -- actions --------------------------------------------------------------------------

    def _selected(self, verb: str) -> str | None:
        name = self.query_one(ModelsTable).selected
        if name is None:
            self.notify(f"no model to {verb}: load one with l", severity="warning")
        return name

    def action_load(self) -> None:
        self.app.push_screen(LoadModal(self.client))

    def action_scale(self) -> None:
        name = self._selected("scale")
        model = self.snapshot.model(name) if name and self.snapshot else None
        if model is not None:
            self.app.push_screen(ScaleModal(self.client, model))

    def action_unload(self) -> None:
        name = self._selected("unload")
        if name is not None:
            self.app.push_screen(UnloadModal(name), lambda force: self._unload_chosen(name, force))

    def _unload_chosen(self, name: str, force: bool | None) -> None:
        if force is not None:
            self.unload(name, force)

    @work(group="commands")
    async def unload(self, name: str, force: bool) -> None:
        try:
            await self.client.call("unload", name=name, force=force)
        except MgpudError as exc:
            report_failure(self, f"unload {name}", exc)
            return
        self.notify(f"{name} unloaded")

    def action_generate(self) -> None:
        name = self._selected("send a prompt to")
        if name is not None:
            self.app.push_screen(PromptScreen(self.client, name))

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self))

    def action_quit(self) -> None:
        self.app.exit()
