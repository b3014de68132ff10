"""The dashboard's panels. Each takes the latest Snapshot through `show` and keeps it, so
that a resize redraws with the columns that fit the new width."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, RichLog, Sparkline, Static

from . import render
from .state import HISTORY_SAMPLES, DaemonView, DeviceView, ModelView, ReplicaView, Series, Snapshot

COMPACT, NORMAL, WIDE = "compact", "normal", "wide"


def mode_for(width: int) -> str:
    """The layout a width allows: 80 columns are compact, 200 are wide."""
    return COMPACT if width < 110 else NORMAL if width < 160 else WIDE


class StatusBar(Static):
    """Connection, daemon state, version, uptime and runtime directory, on one line; the
    directory goes last, where a narrow terminal cuts it."""

    def show(self, daemon: DaemonView | None, runtime_dir: str, connected: bool | None) -> None:
        line = Text.assemble(("mgpud", "bold"), " ")
        if connected is None:
            line.append("… connecting", style="yellow")
        elif connected:
            line.append("● connected", style="green")
        else:
            line.append("○ DISCONNECTED", style="bold red")
        if daemon is not None:
            line.append(f"  v{daemon.version} ")
            line.append_text(render.state(daemon.state))
            line.append(f"  up {render.duration(daemon.uptime_s)}  pid {daemon.pid}  "
                        f"{daemon.generations_running or 0} generating")
        line.append(f"  {runtime_dir}")
        self.update(line)


class Banner(Static):
    """Says loudly what is wrong with the daemon (down, stopping); hidden otherwise."""

    def say(self, text: str | None) -> None:
        self.set_class(bool(text), "-shown")
        self.update(text or "")


class DevicesTable(DataTable[Text | str]):
    def __init__(self) -> None:
        super().__init__(id="devices", cursor_type="none", show_cursor=False, zebra_stripes=True)
        self.can_focus = False  # nothing to select here: the arrow keys belong to the models
        self.border_title = "Devices"
        self.border_subtitle = render.memory_legend(short=True)
        self._devices: tuple[DeviceView, ...] = ()

    def show(self, devices: tuple[DeviceView, ...]) -> None:
        self._devices = devices
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        mode = mode_for(self.size.width)
        columns = [c for c in DEVICE_COLUMNS if mode in c[1]]
        self.clear(columns=True)
        for label, _, _ in columns:
            self.add_column(label.replace("%bar", "MEMORY".ljust(BAR[mode])))
        for device in self._devices:
            self.add_row(*(cell(device, mode) for _, _, cell in columns), key=device.id)


def _held_by(d: DeviceView) -> Text | str:
    if d.model is None:
        return "" if d.error is None else Text(d.error, style="red")
    replica = f" r{d.replica}" if d.replica is not None else ""
    rank = f" rank{d.rank}" if d.rank is not None else ""
    return f"{d.model}{replica}{rank}"


def _kv(d: DeviceView) -> str:
    if d.split is None:
        return render.NONE
    return f"{render.size(d.split.kv_used)}/{render.size(d.split.kv_used + d.split.kv_reserved)}"


def _split(field: str) -> Callable[[DeviceView, str], str]:
    return lambda d, mode: render.size(getattr(d.split, field)) if d.split else render.NONE


ALL = (COMPACT, NORMAL, WIDE)
BAR = {COMPACT: 16, NORMAL: 24, WIDE: 40}  # the memory bar's width, by layout
# (header, layouts that show it, cell from the device and the layout); "%bar" is padded
# to the bar's width.
DEVICE_COLUMNS: tuple[tuple[str, tuple[str, ...], Callable[[DeviceView, str], Text | str]], ...] = (
    ("DEVICE", ALL, lambda d, mode: d.id),
    ("NAME", (WIDE,), lambda d, mode: d.name),
    ("%bar", ALL, lambda d, mode: render.memory_bar(d.split, BAR[mode])),
    ("WEIGHTS", ALL, _split("weights")),
    ("KV USE/RES", ALL, lambda d, mode: _kv(d)),
    ("ACT", (NORMAL, WIDE), _split("activations")),
    ("OTHER", (NORMAL, WIDE), _split("other")),
    ("FREE", ALL, _split("free")),
    ("TOTAL", (WIDE,), lambda d, mode: render.size(d.memory_total)),
    ("UTIL", (NORMAL, WIDE), lambda d, mode: render.percent(d.utilization)),
    ("TEMP", (NORMAL, WIDE), lambda d, mode: render.percent(d.temperature, "C")),
    ("POWER", (WIDE,), lambda d, mode: render.percent(d.power, "W")),
    ("HELD BY", ALL, lambda d, mode: _held_by(d)),
)


class ModelsTable(DataTable[Text | str]):
    """One row per model, and one per replica beneath it when it has several."""

    # DataTable's own arrow keys, with the tooltip that the help screen shows.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor_up", "Cursor up", show=False, tooltip="select a model"),
        Binding("down", "cursor_down", "Cursor down", show=False, tooltip="select a model"),
    ]

    def __init__(self) -> None:
        super().__init__(id="models", cursor_type="row", zebra_stripes=True)
        self.border_title = "Models"
        self._models: tuple[ModelView, ...] = ()
        self._owner: dict[str, str] = {}  # row key -> model name

    @property
    def selected(self) -> str | None:
        """The model under the cursor (a replica row selects its model)."""
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return self._owner.get(key or "")

    def show(self, models: tuple[ModelView, ...]) -> None:
        self._models = models
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        mode = mode_for(self.size.width)
        keep = self.selected
        columns = [c for c in MODEL_COLUMNS if mode in c[1]]
        self.clear(columns=True)
        for label, _, _ in columns:
            self.add_column(label)
        self._owner = {}
        for line in (line for model in self._models for line in _lines(model)):
            self._owner[line.key] = line.model
            self.add_row(*(cell(line, mode) for _, _, cell in columns), key=line.key)
        if keep in self._owner:
            self.move_cursor(row=self.get_row_index(keep), animate=False)


@dataclass(frozen=True)
class _Line:
    """One row of the models table: a model, or one of its replicas."""

    key: str
    model: str  # the model it belongs to
    label: Text | str
    shape: str
    devices: tuple[str, ...]
    state: Text
    view: ModelView | ReplicaView  # both carry running, waiting, kv_headroom, tokens/s, TTFT, error
    max_model_len: str
    pids: tuple[int, ...]


def _lines(model: ModelView) -> Iterator[_Line]:
    yield _Line(model.name, model.name, Text(model.name, style="bold"), f"{model.tp}x{model.dp}",
                model.devices, render.state(model.state, model.progress), model,
                render.count(model.max_model_len), model.pids)
    if len(model.replicas) > 1:
        for r in model.replicas:
            yield _Line(f"{model.name}\0{r.index}", model.name, f" └ r{r.index}", f"{r.tp}x1", r.devices,
                        render.state(r.state), r, "", ())


def _ttft(f: ModelView | ReplicaView) -> str:
    return f"{render.millis(f.ttft_p50_ms)}/{render.millis(f.ttft_p95_ms)}"


# Widths that keep a models table inside the screen, by layout.
GAUGE = {COMPACT: 6, NORMAL: 6, WIDE: 10}
ERROR = {COMPACT: 0, NORMAL: 28, WIDE: 48}

# (header, layouts that show it, cell from the line and the layout)
MODEL_COLUMNS: tuple[tuple[str, tuple[str, ...], Callable[[_Line, str], Text | str]], ...] = (
    ("MODEL", ALL, lambda line, mode: line.label),
    ("TPxDP", ALL, lambda line, mode: line.shape),
    ("DEVICES", (NORMAL, WIDE), lambda line, mode: ",".join(line.devices)),
    ("STATE", ALL, lambda line, mode: line.state),
    ("KV HEADROOM", ALL, lambda line, mode: render.gauge(line.view.kv_headroom, GAUGE[mode])),
    ("RUN/WAIT", ALL, lambda line, mode: f"{render.count(line.view.running)}/{render.count(line.view.waiting)}"),
    ("TOK/S", ALL, lambda line, mode: render.rate(line.view.tokens_per_s)),
    ("TTFT p50/p95 ms", ALL, lambda line, mode: _ttft(line.view)),
    ("MAX LEN", (WIDE,), lambda line, mode: line.max_model_len),
    ("PIDS", (WIDE,), lambda line, mode: " ".join(map(str, line.pids))),
    ("ERROR", (NORMAL, WIDE), lambda line, mode: Text(render.clip(line.view.error, ERROR[mode]), style="red")),
)


class ThroughputRow(Horizontal):
    """One model: its tokens/s and TTFT p95 now, and their sparklines."""

    def __init__(self, name: str) -> None:
        super().__init__(classes="throughput-row")
        self.model_name = name

    def compose(self) -> ComposeResult:
        yield Label(self.model_name, classes="name")
        yield Label(classes="tps")
        yield Sparkline([], classes="tps")
        yield Label(classes="ttft")
        yield Sparkline([], classes="ttft")

    def show(self, model: ModelView, series: Series) -> None:
        self.query_one("Label.tps", Label).update(f"{render.rate(model.tokens_per_s):>5} tok/s")
        self.query_one("Label.ttft", Label).update(f"p95 {render.millis(model.ttft_p95_ms):>4} ms")
        self.query_one("Sparkline.tps", Sparkline).data = _padded(series.tokens_per_s)
        self.query_one("Sparkline.ttft", Sparkline).data = _padded(series.ttft_p95_ms)


def _padded(values: tuple[float, ...]) -> list[float]:
    """The history, zeros before it began, so that the right edge is always now."""
    return [0.0] * (HISTORY_SAMPLES - len(values)) + list(values)


class Throughput(Vertical):
    def __init__(self) -> None:
        super().__init__(id="throughput")
        self.border_title = "Throughput, last 5 min"

    def compose(self) -> ComposeResult:
        yield Label("no model loaded", classes="empty")

    async def show(self, snapshot: Snapshot) -> None:
        rows = {row.model_name: row for row in self.query(ThroughputRow)}
        names = [m.name for m in snapshot.models]
        if list(rows) != names:
            await self.query(ThroughputRow).remove()
            rows = {name: ThroughputRow(name) for name in names}
            await self.mount_all(rows.values())
        self.query_one("Label.empty", Label).display = not names
        for model in snapshot.models:
            rows[model.name].show(model, snapshot.history.get(model.name, Series((), ())))


class EventLog(RichLog):
    def __init__(self) -> None:
        super().__init__(id="events", max_lines=1000, wrap=True, markup=False, min_width=20)
        self.border_title = "Events"
        self.can_focus = False

    def add(self, at: float, text: Text) -> None:
        self.write(Text.assemble((render.clock(at), "grey50"), " ", text))
