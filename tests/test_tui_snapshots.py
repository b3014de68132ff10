"""What the dashboard and each dialog show, fed fixed telemetry by a fake client, at the
three layouts (80, 120 and 200 columns).

The tests compare content, not pictures: each table's columns and cells, the status line,
the throughput figures and history, the event log, the dialogs' fields, verdicts and
buttons, and that every panel and dialog lies on screen with its columns inside it. A
wrong figure or a dropped column fails them; a Textual release that draws the same
content with other escape codes or SVG markup does not.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.app import App
from textual.widget import Widget
from textual.widgets import Button, Checkbox, DataTable, Input, Label, RichLog, Static

from mgpud.records import (DaemonSummary, Device, LoadProgress, MemorySplit, ModelFigures, ModelRecord,
                           ReplicaFigures, to_wire)
from mgpud.tui.app import MgpudTop
from mgpud.tui.modals import HelpScreen, LoadModal, ScaleModal, UnloadModal
from mgpud.tui.prompt import PromptScreen
from mgpud.tui.widgets import Chart, ModelsTable
from waiting import until

GiB = 1 << 30
MiB = 1 << 20
T0 = 1_800_000_000.0  # the daemon's clock at the first event
RESTARTED = "worker pid 4101 exited with code -9"  # replica 1's last failure


def device(index: int, model: str | None, replica: int | None, weights: int, kv: int, kv_used: int
           ) -> dict[str, Any]:
    used = weights + kv + 120 * MiB + 300 * MiB
    memory = MemorySplit(weights=weights, kv_allocated=kv, kv_used=kv_used, activations=120 * MiB,
                         other=300 * MiB, free=4 * GiB - used, kv_touched=max(kv_used, kv // 2))
    return to_wire(Device(id=f"cpu:{index}", index=index, kind="cpu", name=f"CPU virtual device {index}",
                          memory_total=4 * GiB, memory_used=used, model=model, rank=0 if model else None,
                          replica=replica, memory=memory))


def replica(index: int, device_id: str, running: int, used: int, rate: float, ttft: float,
            error: str | None = None) -> ReplicaFigures:
    return ReplicaFigures(index=index, state="ready", devices=[device_id], tp=1, pids=[4100 + index],
                          running=running, waiting=0, kv_blocks_used=used, kv_blocks_total=1000,
                          tokens_per_s_10s=rate, ttft_p50_ms=ttft / 2, ttft_p95_ms=ttft, error=error,
                          dtype="float32", quantization="int8", kv_cache_dtype="float32")


def telemetry(step: int) -> dict[str, Any]:
    """The daemon's telemetry `step` half-seconds after the first: smol serving on two
    replicas with a rising load, tiny still loading. Built from the records the daemon
    sends, so that it is what a daemon sends."""
    rate = 10.0 * step
    stats = ModelFigures(name="smol", tp=1, dp=2, max_model_len=2048, running=6, waiting=2, kv_blocks_used=700,
                         kv_blocks_total=2000, tokens_per_s_10s=rate, ttft_p50_ms=35.0, ttft_p95_ms=80.0 + 4 * step,
                         replicas=[replica(0, "cpu:0", 4, 600, rate * 0.6, 80.0 + step),
                                   replica(1, "cpu:1", 2, 100, rate * 0.4, 60.0 + step, RESTARTED)])
    smol = ModelRecord(name="smol", model="demo", state="ready", tp=1, dp=2, devices=["cpu:0", "cpu:1"],
                       stats=stats, weights="int8", kv_cache_dtype="float32")
    tiny = ModelRecord(name="tiny", model="/models/tiny", state="loading", tp=1, dp=1, devices=["cpu:2"],
                       progress=LoadProgress(phase="load", bytes_done=45, bytes_total=100, tensors_done=9,
                                             tensors_total=20, message="9/20 tensors"))
    daemon = DaemonSummary(version="0.1.0", protocol=1, pid=4000, state="running", started_at=T0 - 3723,
                           uptime_s=3723.0 + step / 2, generations_running=6)
    return {
        "daemon": to_wire(daemon),
        "devices": [device(0, "smol", 0, 538 * MiB, 2 * GiB, 1400 * MiB),
                    device(1, "smol", 1, 538 * MiB, 2 * GiB, 200 * MiB),
                    device(2, "tiny", 0, 0, 0, 0)],
        "models": [to_wire(smol), to_wire(tiny)],
    }


LIFECYCLE = [
    {"kind": "daemon_ready"},
    {"kind": "model_loading", "model": "smol", "tp": 1, "dp": 2, "devices": ["cpu:0", "cpu:1"], "reasons": []},
    {"kind": "model_ready", "model": "smol"},
    {"kind": "replica_failed", "model": "smol", "replica": 1, "error": RESTARTED},
    {"kind": "replica_restarted", "model": "smol", "replica": 1},
    {"kind": "model_loading", "model": "tiny", "tp": 1, "dp": 1, "devices": ["cpu:2"], "reasons": []},
]

PLAN = {
    "model": "demo", "device_count": 3, "impossible": {"2": "9 attention heads cannot be split 2 ways"},
    "shapes": [
        {"tp": 1, "dp": d, "fits": True, "why": "holds 7 of the 16 sequences wanted at 2048 tokens",
         "weights_per_device": 538 * MiB, "kv_per_device": 2900 * MiB, "kv_tokens": 64912,
         "tokens_per_s": 18.3 * d, "bound": "memory"} for d in (1, 2, 3)],
    "chosen": [1, 3], "reasons": ["dp=3: 3 devices // tp=1"],
}


class FakeClient:
    """What the dashboard uses of AsyncClient, with fixed answers and no daemon."""

    runtime_dir = Path("/run/mgpud")

    def __init__(self) -> None:
        self.feed = [{"topic": "event", "time": T0 + i, "data": e} for i, e in enumerate(LIFECYCLE)]
        self.feed += [{"topic": "telemetry", "time": T0 + 10 + i / 2, "data": telemetry(i)} for i in range(12)]

    async def events(self, topics: tuple[str, ...] = ("",)) -> AsyncIterator[dict[str, Any]]:
        for event in self.feed:
            yield event
        await asyncio.Event().wait()  # a daemon with nothing more to say

    async def call(self, op: str, /, **args: Any) -> dict[str, Any]:
        assert op == "plan", op
        return PLAN

    async def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Event times print in local time: pin it."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


# -- what the screen must show --------------------------------------------------------------

LAST_UPTIME = 3723.0 + 11 / 2  # the last telemetry's
STATUS = "mgpud ● connected  v0.1.0 running  up 1h02m  pid 4000  6 generating  /run/mgpud"
FOOTER = [("l", "Load"), ("s", "Scale"), ("u", "Unload"), ("g", "Generate"), ("?", "Help"), ("q", "Quit")]

# The memory bar: one glyph per part, in this order, so that it reads without colour too.
GLYPHS = {"█": "weights", "▓": "KV used", "▒": "KV res", "░": "act", "▚": "other", "·": "free"}
LEGEND = "█ weights ▓ KV used ▒ KV res ░ act ▚ other · free"


def bar(*cells: int) -> str:
    """A memory bar of so many cells of weights, KV used, KV reserved, activations, other, free."""
    return "".join(glyph * n for glyph, n in zip(GLYPHS, cells, strict=True))


# Layout by width: 80 columns compact, 120 and 160 normal (a table inside its border is under 160), 200 wide.
LAYOUTS = {80: 80, 120: 120, 160: 120, 200: 200}
DEVICE_COLUMNS = {
    80: ["DEVICE", "MEMORY", "KV USE/TCH/RES", "FREE", "UTIL", "TEMP", "HELD BY"],  # UTIL, TEMP kept; the bar has weights
    120: ["DEVICE", "MEMORY", "WEIGHTS", "KV USE/TCH/RES", "ACT", "OTHER", "FREE", "UTIL", "TEMP", "HELD BY"],
    200: ["DEVICE", "NAME", "MEMORY", "WEIGHTS", "KV USE/TCH/RES", "ACT", "OTHER", "FREE", "TOTAL", "UTIL", "TEMP",
          "POWER", "HELD BY"],
}
# cpu:0 holds 538M of weights, 1.4G of KV in use out of 2G, 120M activations, 300M other, of 4G.
BARS = {
    80: {"cpu:0": bar(2, 6, 2, 1, 1, 4), "cpu:1": bar(2, 1, 7, 1, 1, 4), "cpu:2": bar(0, 0, 0, 1, 1, 14)},
    120: {"cpu:0": bar(3, 10, 3, 1, 1, 6), "cpu:1": bar(3, 1, 12, 1, 1, 6), "cpu:2": bar(0, 0, 0, 1, 1, 22)},
    200: {"cpu:0": bar(5, 16, 6, 1, 2, 10), "cpu:1": bar(5, 1, 21, 1, 2, 10), "cpu:2": bar(0, 0, 0, 1, 2, 37)},
}
DEVICES = {
    "cpu:0": {"DEVICE": "cpu:0", "NAME": "CPU virtual device 0", "WEIGHTS": "538M", "KV USE/TCH/RES": "1.4G/1.4G/2.0G",
              "ACT": "120M", "OTHER": "300M", "FREE": "1.1G", "TOTAL": "4.0G", "UTIL": "–", "TEMP": "–",
              "POWER": "–", "HELD BY": "smol r0 rank0"},
    "cpu:1": {"DEVICE": "cpu:1", "NAME": "CPU virtual device 1", "WEIGHTS": "538M", "KV USE/TCH/RES": "200M/1.0G/2.0G",
              "ACT": "120M", "OTHER": "300M", "FREE": "1.1G", "TOTAL": "4.0G", "UTIL": "–", "TEMP": "–",
              "POWER": "–", "HELD BY": "smol r1 rank0"},
    "cpu:2": {"DEVICE": "cpu:2", "NAME": "CPU virtual device 2", "WEIGHTS": "0B", "KV USE/TCH/RES": "0B/0B/0B",
              "ACT": "120M", "OTHER": "300M", "FREE": "3.6G", "TOTAL": "4.0G", "UTIL": "–", "TEMP": "–",
              "POWER": "–", "HELD BY": "tiny r0 rank0"},
}

MODEL_COLUMNS = {
    80: ["MODEL", "TPxDP", "STATE", "KV HEADROOM", "RUN/WAIT", "TOK/S", "TTFT p50/p95 ms"],
    120: ["MODEL", "TPxDP", "DEVICES", "STATE", "KV HEADROOM", "RUN/WAIT", "TOK/S", "TTFT p50/p95 ms", "ERROR"],
    200: ["MODEL", "TPxDP", "DEVICES", "STATE", "KV HEADROOM", "RUN/WAIT", "TOK/S", "TTFT p50/p95 ms", "WEIGHTS",
          "MAX LEN", "EXPERT BAL", "PIDS", "ERROR"],
}
# KV headroom: the share of KV blocks free (smol 700 of 2000 used; r0 600 of 1000; r1 100 of 1000).
HEADROOM = {
    80: {"smol": "████░░  65%", " └ r0": "██░░░░  40%", " └ r1": "█████░  90%", "tiny": "–"},
    120: {"smol": "████░░  65%", " └ r0": "██░░░░  40%", " └ r1": "█████░  90%", "tiny": "–"},
    200: {"smol": "██████░░░░  65%", " └ r0": "████░░░░░░  40%", " └ r1": "█████████░  90%", "tiny": "–"},
}
ERRORS = {80: None, 120: "worker pid 4101 exited with…", 200: RESTARTED}  # no column at 80; cut to its width
MODELS = {  # the last telemetry: 110 tok/s, TTFT p95 124 ms; replica rows under smol
    "smol": {"MODEL": "smol", "TPxDP": "1x2", "DEVICES": "cpu:0,cpu:1", "STATE": "ready", "RUN/WAIT": "6/2",
             "TOK/S": "110.0", "TTFT p50/p95 ms": "35/124", "WEIGHTS": "int8", "MAX LEN": "2048", "EXPERT BAL": "–", "PIDS": "4100 4101",
             "ERROR": ""},
    " └ r0": {"MODEL": " └ r0", "TPxDP": "1x1", "DEVICES": "cpu:0", "STATE": "ready", "RUN/WAIT": "4/0",
              "TOK/S": "66.0", "TTFT p50/p95 ms": "46/91", "WEIGHTS": "int8", "MAX LEN": "", "EXPERT BAL": "–", "PIDS": "",
              "ERROR": ""},
    " └ r1": {"MODEL": " └ r1", "TPxDP": "1x1", "DEVICES": "cpu:1", "STATE": "ready", "RUN/WAIT": "2/0",
              "TOK/S": "44.0", "TTFT p50/p95 ms": "36/71", "WEIGHTS": "int8", "MAX LEN": "", "EXPERT BAL": "–", "PIDS": ""},
    "tiny": {"MODEL": "tiny", "TPxDP": "1x1", "DEVICES": "cpu:2", "STATE": "load 45%", "RUN/WAIT": "–/–",
             "TOK/S": "–", "TTFT p50/p95 ms": "–/–", "WEIGHTS": "–", "MAX LEN": "–", "EXPERT BAL": "–", "PIDS": "",
             "ERROR": ""},
}

EVENTS = [
    "08:00:00 connected to the daemon at /run/mgpud",
    "08:00:00 daemon ready",
    "08:00:01 smol: loading, tp 1 x dp 2 on cpu:0,cpu:1",
    "08:00:02 smol: ready",
    f"08:00:03 smol replica 1: FAILED: {RESTARTED}",
    "08:00:04 smol replica 1: restarted",
    "08:00:05 tiny: loading, tp 1 x dp 1 on cpu:2",
]
# Throughput per model: the figures now with each chart's scale (a round number above the
# window's peak), and the history of the twelve readings (tiny, loading, has no figures
# yet: unknown now, zeros in the history, an empty chart on the smallest scale).
THROUGHPUT = {
    "smol": ("110.0 tok/s scale 0–200", "p95 124 ms scale 0–200", [10.0 * i for i in range(12)],
             [80.0 + 4 * i for i in range(12)]),
    "tiny": ("– tok/s scale 0–1", "p95 – ms scale 0–1", [0.0] * 12, [0.0] * 12),
}


# -- reading the screen ---------------------------------------------------------------------

def text(value: object) -> str:
    """What a title reads as on screen (Textual keeps titles as markup)."""
    return Text.from_markup(value).plain if isinstance(value, str) else str(value)


def words(value: object) -> str:
    """A label's text, its alignment padding left out."""
    return " ".join(str(value).split())


def table(app: App[None], table_id: str) -> tuple[list[str], list[list[str]]]:
    """A table's column headers and its rows as plain text, in screen order."""
    t = app.screen_stack[0].query_one(f"#{table_id}", DataTable)
    return ([str(c.label).strip() for c in t.ordered_columns],
            [[str(cell) for cell in t.get_row(row.key)] for row in t.ordered_rows])


def on_screen(app: App[None], widget: Widget, inside: Widget | None = None) -> None:
    """`widget` is drawn, whole, inside the screen (or inside `inside`)."""
    outer = (inside or app.screen).region
    assert widget.display and widget.region.area > 0, f"{widget!r} is not shown"
    assert outer.contains_region(widget.region), f"{widget!r} at {widget.region} is cut by {outer}"


def fits(t: DataTable[Any]) -> None:
    """Every column and every row of a table shows without scrolling."""
    room = t.scrollable_content_region
    assert t.virtual_size.width <= room.width, f"{t.id}: {t.virtual_size.width} columns of content in {room.width}"
    assert t.virtual_size.height <= room.height, f"{t.id}: {t.virtual_size.height} lines of content in {room.height}"


def check_main_screen(app: App[None], width: int) -> None:
    main = app.screen_stack[0]
    assert app.screen is main

    status = main.query_one("#status", Static)
    on_screen(app, status)
    assert str(status.render()) == STATUS
    # Only the runtime directory, last, may be cut by a narrow terminal.
    assert len(STATUS.rsplit("  ", 1)[0]) <= status.content_region.width
    assert not main.query_one("#banner").display

    devices = main.query_one("#devices", DataTable)
    on_screen(app, devices)
    fits(devices)
    assert text(devices.border_subtitle).strip() == LEGEND
    header, rows = table(app, "devices")
    assert header == DEVICE_COLUMNS[width]
    want = [{**DEVICES[d], "MEMORY": BARS[width][d]} for d in DEVICES]
    assert rows == [[row[column] for column in header] for row in want]

    models = main.query_one(ModelsTable)
    on_screen(app, models)
    fits(models)
    assert models.selected == "smol"  # what s, u and g act on
    header, rows = table(app, "models")
    assert header == MODEL_COLUMNS[width]
    want = [{**MODELS[m], "KV HEADROOM": HEADROOM[width][m]} for m in MODELS]
    want[2]["ERROR"] = ERRORS[width]  # replica 1's last failure
    assert rows == [[row[column] for column in header] for row in want]

    throughput = main.query_one("#throughput")
    on_screen(app, throughput)
    assert not throughput.query_one("Label.empty").display
    shown = {}
    for row in throughput.query(".throughput-row"):
        on_screen(app, row, inside=throughput)
        rate, ttft = (words(row.query_one(f"Label.{c}", Label).render()) for c in ("tps", "ttft"))
        charts = [row.query_one(f"Chart.{c}", Chart) for c in ("tps", "ttft")]
        shown[str(row.query_one("Label.name", Label).render())] = (rate, ttft, *(c.values[-12:] for c in charts))
        if str(row.query_one("Label.name", Label).render()) == "tiny":  # idle: an empty chart, not blocks
            assert all(not str(c.render()).strip() for c in charts)
    assert shown == THROUGHPUT
    # The charts take the panel's height: no empty rows under them.
    rows = list(throughput.query(".throughput-row"))
    assert rows[-1].region.bottom >= throughput.content_region.bottom - 1

    log = main.query_one("#events", RichLog)
    on_screen(app, log)
    assert " ".join(" ".join(line.text for line in log.lines).split()) == " ".join(EVENTS)
    assert log.scroll_y == log.max_scroll_y  # the newest event is in view

    footer = [(b.binding.key_display or b.binding.key, b.binding.description)
              for b in app.active_bindings.values() if b.binding.show]
    assert footer == FOOTER
    on_screen(app, main.query_one("Footer"))


def check_dialog(app: App[None], title: str, buttons: list[str], focused: str | None) -> Widget:
    """The dialog on top: its title, its buttons, where the cursor is, and all of it on screen."""
    dialog = app.screen.query_one("#dialog")
    on_screen(app, dialog)
    whole(app, dialog)
    assert text(dialog.border_title) == title
    assert [str(b.label) for b in app.screen.query(Button)] == buttons
    assert (app.focused and app.focused.id) == focused
    return dialog


def whole(app: App[None], dialog: Widget) -> None:
    """Nothing in the dialog is cut by its border (an empty label takes no room)."""
    for child in dialog.children:
        if child.display and child.region.area:
            on_screen(app, child, inside=dialog)


def form(app: App[None]) -> list[tuple[str, str, str, str]]:
    """The form's fields: (label, input id, value, placeholder)."""
    labels = [str(label.render()) for label in app.screen.query(".form Label")]
    inputs = list(app.screen.query(".form Input").results(Input))
    return [(label, i.id or "", i.value, str(i.placeholder)) for label, i in zip(labels, inputs, strict=True)]


def verdict(app: App[None]) -> str:
    widget = app.screen.query_one("#verdict")
    shown = str(widget.render())
    assert widget.region.height >= len(shown.splitlines()), "the verdict is cut"
    return shown


# -- driving the dashboard ------------------------------------------------------------------

def show(size: tuple[int, int], check: Any, keys: tuple[str, ...] = (), screen: type | None = None,
         plan: bool = False) -> None:
    """Run the dashboard on the fake telemetry at `size`, press `keys`, wait for `screen`
    (and the planner's verdict), then `check(app)`."""
    async def go() -> None:
        app = MgpudTop(FakeClient())  # type: ignore[arg-type]
        async with app.run_test(size=size) as pilot:
            def snapshot() -> object:
                return getattr(app.screen_stack[0], "snapshot", None)

            await until(pilot, lambda: snapshot() is not None and snapshot().daemon.uptime_s == LAST_UPTIME,
                        "the last telemetry", detail=lambda: snapshot())
            await pilot.press(*keys)
            if screen is not None:
                await until(pilot, lambda: isinstance(app.screen, screen), f"the {screen.__name__}")
            if plan:
                await until(pilot, lambda: str(app.screen.query_one("#verdict").render())[:1] in ("✓", "✗"),
                            "the planner's verdict")
            await pilot.pause()
            check(app)

    asyncio.run(go())


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 45), (200, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen(size: tuple[int, int]) -> None:
    show(size, lambda app: check_main_screen(app, LAYOUTS[size[0]]))


def test_main_screen_without_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    """With NO_COLOR the bars still read: each part has its own glyph, named in the legend."""
    monkeypatch.setenv("NO_COLOR", "1")

    def check(app: App[None]) -> None:
        assert app.no_color
        check_main_screen(app, 80)
        _, rows = table(app, "devices")
        assert all(set(row[1]) <= set(GLYPHS) for row in rows)
        assert len(set(GLYPHS)) == len(GLYPHS)

    show((80, 24), check)


def test_load_modal() -> None:
    def check(app: App[None]) -> None:
        check_dialog(app, "Load a model", ["Load", "Cancel"], focused="model")
        assert form(app) == [("Model", "model", "demo", "demo, or a model directory"),
                             ("Name", "name", "", "default: the directory's name"),
                             ("TP", "tp", "0", ""), ("DP", "dp", "0", ""),
                             ("Max len", "max_model_len", "", "the daemon's default")]
        assert str(app.screen.query_one(".hint", Label).render()) == \
            "tp, dp: 0 = the planner chooses. Enter confirms, Esc closes."
        assert verdict(app) == ("✓ fits: tp 1 x dp 3 (the planner's choice)\n"
                                "  holds 7 of the 16 sequences wanted at 2048 tokens\n"
                                "  per device: weights 538M, KV 2.8G (64912 tokens per replica)\n"
                                "  about 55 tok/s decode, memory-bound\n"
                                "  dp=3: 3 devices // tp=1")
        assert not app.screen.query_one("#progress").display  # nothing running yet

    show((100, 30), check, ("l",), LoadModal, plan=True)


def test_scale_modal() -> None:
    def check(app: App[None]) -> None:
        check_dialog(app, "Scale smol: now tp 1 x dp 2", ["Scale", "Cancel"], focused="tp")
        assert form(app) == [("TP", "tp", "1", ""), ("DP", "dp", "2", "")]
        assert str(app.screen.query_one(".hint", Label).render()) == \
            "Serving goes on while it reshapes. Enter confirms, Esc closes."
        assert verdict(app) == ("✓ fits: tp 1 x dp 2\n"
                                "  holds 7 of the 16 sequences wanted at 2048 tokens\n"
                                "  per device: weights 538M, KV 2.8G (64912 tokens per replica)\n"
                                "  about 37 tok/s decode, memory-bound")
        assert not app.screen.query_one("#progress").display

    show((100, 30), check, ("s",), ScaleModal, plan=True)


UNLOAD_QUESTION = "Unload smol? Unload lets running generations finish first; Force cancels them."


def test_unload_modal() -> None:
    def check(app: App[None]) -> None:
        dialog = app.screen.query_one("#dialog")
        on_screen(app, dialog)
        assert text(dialog.border_title) == "Unload smol"
        assert [str(label.render()) for label in dialog.query(Label)] == [UNLOAD_QUESTION]
        assert [str(b.label) for b in dialog.query(Button)] == ["Unload", "Force", "Keep it"]
        assert app.focused is dialog.query_one("#unload")

    show((100, 30), check, ("u",), UnloadModal)


@pytest.mark.parametrize("size", [(80, 24), (100, 30)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_unload_question_fits_its_dialog(size: tuple[int, int]) -> None:
    def check(app: App[None]) -> None:
        dialog = app.screen.query_one("#dialog")
        on_screen(app, dialog)
        whole(app, dialog)
        assert dialog.query_one(Label).region.height == 2  # 78 columns of question, wrapped

    show(size, check, ("u",), UnloadModal)


def test_prompt_screen() -> None:
    def check(app: App[None]) -> None:
        dialog = check_dialog(app, "Generate with smol", ["Send", "Stop", "Close"], focused="prompt")
        fields = [(i.id, i.value, str(i.placeholder)) for i in dialog.query(Input).results(Input)]
        assert fields == [("prompt", "", "a prompt; Enter sends"), ("max_tokens", "128", ""),
                          ("temperature", "0", "")]
        assert [str(label.render()) for label in dialog.query(".options Label")] == ["max tokens", "temperature"]
        chat = dialog.query_one("#chat", Checkbox)
        assert chat.value and str(chat.label) == "chat template"
        assert str(dialog.query_one("#text").render()) == "" and str(dialog.query_one("#stats").render()) == ""
        on_screen(app, dialog.query_one("#output"), inside=dialog)

    show((100, 30), check, ("g",), PromptScreen)


def test_help_screen() -> None:
    def check(app: App[None]) -> None:
        dialog = check_dialog(app, "mgpud top: keys", [], focused=None)
        lines = [line.strip() for line in str(dialog.query_one(Static).render()).splitlines()]
        keys = lines[:7]
        assert keys == [  # generated from the bindings: the focused models table's, then the screen's
            "↑ ↓  select a model",
            "l  load a model: path or demo, name, tp, dp, max length; the planner judges the shape",
            "s  scale the selected model to another tp x dp while it serves",
            "u  unload the selected model (after its running generations, or forced)",
            "g  send a prompt to the selected model and watch the tokens stream",
            "?  this help",
            "q  quit (the daemon keeps running)",
        ]
        for key, _ in FOOTER:  # every key in the footer is explained
            assert any(line.startswith(f"{key}  ") for line in keys), key
        assert lines[8:15] == ["Memory bars, per device:", "█ weights", "▓ KV in use", "▒ KV reserved, not in use yet",
                               "░ activations (peak, measured at load)", "▚ other: runtime, other processes", "· free"]
        assert str(dialog.query_one(".hint", Label).render()) == "Esc, ? or q closes."

    show((100, 30), check, ("question_mark",), HelpScreen)
