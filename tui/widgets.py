"""The dashboard's panels. Each takes the latest Snapshot through `show` and keeps it, so
that a resize redraws with the columns that fit the new width."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, RichLog, Static

from mgpud.records import DaemonSummary, Device, ModelRecord

from . import render
from .state import HISTORY_SAMPLES, Figures, Series, Snapshot, load_phase, pids, tokens_per_s, ttft_p95_ms

COMPACT, NORMAL, WIDE = "compact", "normal", "wide"
S = TypeVar("S")  # what a table row is drawn from


def mode_for(width: int) -> str:
    """The layout a width allows: 80 columns are compact, 200 are wide."""
    return COMPACT if width < 110 else NORMAL if width < 160 else WIDE


class StatusBar(Static):
    """Connection, daemon state, version, uptime and runtime directory, on one line; the
    directory goes last, where a narrow terminal cuts it."""

    def show(self, daemon: DaemonSummary | None, runtime_dir: str, connected: bool | None) -> None:
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
            line.append(f"  up {render.duration(daemon.uptime_s)}  pid {render.count(daemon.pid)}  "
                        f"{daemon.generations_running or 0} generating")
        line.append(f"  {runtime_dir}")
        self.update(line)


class Banner(Static):
    """Says loudly what is wrong with the daemon (down, stopping); hidden otherwise."""

    def say(self, text: str | None) -> None:
        self.set_class(bool(text), "-shown")
        self.update(text or "")


class Advice(Static):
    """The scaling advisor's sentences (tui/advice.py), each with its command; hidden when
    there is nothing to advise."""

    def say(self, lines: list[str]) -> None:
        self.set_class(bool(lines), "-shown")
        self.update(Text("\n".join(f"▲ {line}" for line in lines)))


ALL = (COMPACT, NORMAL, WIDE)
# A column: (header, layouts that show it, its cell from a row's source and the layout)
Column = tuple[str, tuple[str, ...], Callable[[Any, str], Text | str]]


class _Panel(DataTable[Text | str], Generic[S]):
    """A table drawn from the latest snapshot. It keeps its rows' sources so that a resize
    redraws them with the columns the new width allows."""

    COLUMNS: ClassVar[tuple[Column, ...]] = ()

    def __init__(self, **options: Any) -> None:
        super().__init__(zebra_stripes=True, **options)
        self._rows: dict[str, S] = {}  # row key -> what its cells are drawn from

    def show_rows(self, rows: dict[str, S]) -> None:
        self._redraw(rows)

    def on_resize(self) -> None:
        self._redraw(self._rows)

    def header(self, label: str, mode: str) -> str:
        return label

    def _redraw(self, rows: dict[str, S]) -> None:
        mode = mode_for(self.size.width)
        columns = [c for c in self.COLUMNS if mode in c[1]]
        self.clear(columns=True)
        self._rows = rows
        for label, _, _ in columns:
            self.add_column(self.header(label, mode))
        for key, source in rows.items():
            self.add_row(*(cell(source, mode) for _, _, cell in columns), key=key)


# -- devices ----------------------------------------------------------------------------------

def _held_by(d: Device) -> Text | str:
    if d.model is None:
        return "" if d.error is None else Text(d.error, style="red")
    replica = f" r{d.replica}" if d.replica is not None else ""
    rank = f" rank{d.rank}" if d.rank is not None else ""
    return f"{d.model}{replica}{rank}"


def _kv(d: Device) -> str:
    if d.memory is None:
        return render.NONE
    m = d.memory
    return f"{render.size(m.kv_used)}/{render.size(m.kv_touched)}/{render.size(m.kv_allocated)}"


def _memory(part: str) -> Callable[[Device, str], str]:
    return lambda d, mode: render.size(getattr(d.memory, part)) if d.memory else render.NONE


BAR = {COMPACT: 16, NORMAL: 24, WIDE: 40}  # the memory bar's width, by layout


class DevicesTable(_Panel[Device]):
    COLUMNS = (  # "%bar" is padded to the bar's width
        ("DEVICE", ALL, lambda d, mode: d.id),
        ("NAME", (WIDE,), lambda d, mode: d.name),
        ("%bar", ALL, lambda d, mode: render.memory_bar(d.memory, BAR[mode])),
        ("WEIGHTS", (NORMAL, WIDE), _memory("weights")),
        ("KV USE/TCH/RES", ALL, lambda d, mode: _kv(d)),
        ("ACT", (NORMAL, WIDE), _memory("activations")),
        ("OTHER", (NORMAL, WIDE), _memory("other")),
        ("FREE", ALL, _memory("free")),
        ("TOTAL", (WIDE,), lambda d, mode: render.size(d.memory_total)),
        # What an nvitop user looks at first: kept at 80 columns, where the weights go (the bar shows them).
        ("UTIL", ALL, lambda d, mode: render.percent(d.utilization)),
        ("TEMP", ALL, lambda d, mode: render.percent(d.temperature, "C")),
        ("POWER", (WIDE,), lambda d, mode: render.percent(d.power, "W")),
        ("HELD BY", ALL, lambda d, mode: _held_by(d)),
    )

    def __init__(self) -> None:
        super().__init__(id="devices", cursor_type="none", show_cursor=False)
        self.can_focus = False  # nothing to select here: the arrow keys belong to the models
        self.border_title = "Devices"
        self.border_subtitle = render.memory_legend(short=True)

    def show(self, devices: tuple[Device, ...]) -> None:
        self.show_rows({d.id: d for d in devices})

    def header(self, label: str, mode: str) -> str:
        return label.replace("%bar", "MEMORY".ljust(BAR[mode]))


# -- models -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Line:
    """One row of the models table: a model, or one of its replicas."""

    model: str  # the model it belongs to
    label: Text | str
    shape: str
    devices: list[str]
    state: Text
    figures: Figures | None  # None while a model has no engine group yet
    error: str | None
    max_model_len: str
    pids: tuple[int, ...]
    weights: str  # the linear layers' weights: int8, fp8 or the dtype


def _lines(m: ModelRecord) -> Iterator[tuple[str, _Line]]:
    """(row key, row) for the model, then for each of its replicas when it has several."""
    stats = m.stats
    yield m.name, _Line(m.name, Text(m.name, style="bold"), f"{render.count(m.tp)}x{render.count(m.dp)}",
                        m.devices, render.state(m.state, load_phase(m)), stats, m.error,
                        render.count(stats.max_model_len if stats else None), pids(m), m.weights or render.NONE)
    replicas = stats.replicas if stats else []
    if len(replicas) > 1:
        for r in replicas:
            yield f"{m.name}\0{r.index}", _Line(m.name, f" └ r{r.index}", f"{r.tp}x1", r.devices,
                                                render.state(r.state), r, r.error, "", (),
                                                r.quantization or r.dtype or render.NONE)


def _run_wait(f: Figures | None) -> str:
    return f"{render.NONE}/{render.NONE}" if f is None else f"{f.running}/{f.waiting}"


def _balance(f: Figures | None) -> str:  # MoE expert load balance, 1.00 = even
    return render.NONE if f is None or f.expert_balance is None else f"{f.expert_balance:.2f}"


def _ttft(f: Figures | None) -> str:
    return f"{render.millis(f.ttft_p50_ms if f else None)}/{render.millis(ttft_p95_ms(f))}"


# Widths that keep a models table inside the screen, by layout.
GAUGE = {COMPACT: 6, NORMAL: 6, WIDE: 10}
ERROR = {COMPACT: 0, NORMAL: 28, WIDE: 48}


class ModelsTable(_Panel[_Line]):
    """One row per model, and one per replica beneath it when it has several."""

    COLUMNS = (
        ("MODEL", ALL, lambda line, mode: line.label),
        ("TPxDP", ALL, lambda line, mode: line.shape),
        ("DEVICES", (NORMAL, WIDE), lambda line, mode: ",".join(line.devices)),
        ("STATE", ALL, lambda line, mode: line.state),
        ("KV HEADROOM", ALL,
         lambda line, mode: render.gauge(line.figures.kv_headroom if line.figures else None, GAUGE[mode])),
        ("RUN/WAIT", ALL, lambda line, mode: _run_wait(line.figures)),
        ("TOK/S", ALL, lambda line, mode: render.rate(tokens_per_s(line.figures))),
        ("TTFT p50/p95 ms", ALL, lambda line, mode: _ttft(line.figures)),
        ("WEIGHTS", (WIDE,), lambda line, mode: line.weights),
        ("MAX LEN", (WIDE,), lambda line, mode: line.max_model_len),
        ("EXPERT BAL", (WIDE,), lambda line, mode: _balance(line.figures)),
        ("PIDS", (WIDE,), lambda line, mode: " ".join(map(str, line.pids))),
        ("ERROR", (NORMAL, WIDE), lambda line, mode: Text(render.clip(line.error, ERROR[mode]), style="red")),
    )
    # DataTable's own arrow keys, with the tooltip that the help screen shows.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor_up", "Cursor up", show=False, tooltip="select a model"),
        Binding("down", "cursor_down", "Cursor down", show=False, tooltip="select a model"),
    ]

    def __init__(self) -> None:
        super().__init__(id="models", cursor_type="row")
        self.border_title = "Models"

    @property
    def selected(self) -> str | None:
        """The model under the cursor (a replica row selects its model)."""
        if not self.row_count:
            return None
        line = self._rows.get(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value or "")
        return line.model if line else None

    def show(self, models: tuple[ModelRecord, ...]) -> None:
        self.show_rows({key: line for m in models for key, line in _lines(m)})

    def _redraw(self, rows: dict[str, _Line]) -> None:
        keep = self.selected  # read from the rows shown so far: the cursor stays on its model
        super()._redraw(rows)
        if keep in self._rows:
            self.move_cursor(row=self.get_row_index(keep), animate=False)


class Chart(Static):
    """A history drawn on a fixed scale from 0 (the bottom) to `top`, newest at the right."""

    def __init__(self, classes: str) -> None:
        super().__init__(classes=classes)
        self.values: list[float] = []
        self.top = 1.0

    def plot(self, values: list[float], top: float) -> None:
        self.values, self.top = values, top
        self.refresh()

    def render(self) -> Text:
        return Text("\n".join(render.chart(self.values, self.size.width, self.size.height, self.top)))


class ThroughputRow(Horizontal):
    """One model: its tokens/s and TTFT p95 now, and their charts over the window, each
    labelled with the value now and the chart's scale (0 at the bottom to the top shown)."""

    def __init__(self, name: str) -> None:
        super().__init__(classes="throughput-row")
        self.model_name = name

    def compose(self) -> ComposeResult:
        yield Label(self.model_name, classes="name")
        yield Label(classes="tps")
        yield Chart(classes="tps")
        yield Label(classes="ttft")
        yield Chart(classes="ttft")

    def show(self, model: ModelRecord, series: Series) -> None:
        figures = {"tps": (f"{render.rate(tokens_per_s(model.stats)):>5} tok/s", series.tokens_per_s),
                   "ttft": (f"p95 {render.millis(ttft_p95_ms(model.stats)):>4} ms", series.ttft_p95_ms)}
        for kind, (now, values) in figures.items():
            top = render.nice_top(max(values, default=0.0))
            self.query_one(f"Label.{kind}", Label).update(f"{now}\n{f'scale 0–{top:g}':>11}")
            # Zeros before the history began: the chart always spans the whole window.
            self.query_one(f"Chart.{kind}", Chart).plot([0.0] * (HISTORY_SAMPLES - len(values)) + list(values), top)


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
