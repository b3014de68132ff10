"""The dashboard driven by its keys (Textual's pilot) against a real daemon serving a tiny
model on two CPU devices."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label

from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import AsyncClient
from mgpud.tui.app import MgpudTop
from mgpud.tui.modals import LoadModal, ScaleModal, UnloadModal
from mgpud.tui.prompt import PromptScreen
from mgpud.tui.render import NONE
from mgpud.tui.widgets import ModelsTable

import waiting

pytestmark = pytest.mark.slow

# Loads from the dialog take the daemon's engine defaults: keep the KV cache tiny.
CONFIG = """\
[engine]
kv_cache_memory = 2097152
max_model_len = 256
"""
LOAD_S = 60.0  # a load or reshard spawns worker processes: seconds on a busy 2-core machine


@pytest.fixture(scope="module")
def daemon(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    config = tmp_path_factory.mktemp("tui") / "mgpud.toml"
    config.write_text(CONFIG)
    with DaemonProcess("--config", str(config), "--device-memory", "2GiB") as d:
        d.call("load", model=str(tiny_llama), name="tiny", tp=1, dp=1)
        yield d


async def until(pilot: Pilot[None], ready: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """The shared `until`, its failure showing what the dashboard shows."""
    app = pilot.app

    def shown() -> str:
        return (f"on screen: {app.screen!r}, models {rows(app, 'models')}, toasts {toasts(app)!r}, "
                f"verdict {[str(v.render()) for v in app.screen.query('#verdict')]}")

    await waiting.until(pilot, ready, what, timeout, detail=shown)


def rows(app: MgpudTop, table_id: str) -> dict[str, list[str]]:
    """A table's rows as plain text, by row key."""
    table = app.screen_stack[0].query_one(f"#{table_id}", DataTable)
    return {str(key.value): [str(cell) for cell in table.get_row(key)] for key in table.rows}


def toasts(app: MgpudTop) -> str:
    return "\n".join(str(toast.render()) for toast in app.screen.query("Toast"))


def drive(runtime_dir: Path, scenario: Callable[[MgpudTop, Pilot[None]], Awaitable[None]],
          size: tuple[int, int] = (120, 40)) -> None:
    async def go() -> None:
        app = MgpudTop(AsyncClient(runtime_dir, timeout=3.0))
        async with app.run_test(size=size, notifications=True) as pilot:
            await scenario(app, pilot)

    asyncio.run(go())


def test_devices_and_models_show_their_figures(daemon: DaemonProcess) -> None:
    async def scenario(app: MgpudTop, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "tiny" in rows(app, "models"), "the model")
        devices = rows(app, "devices")
        assert list(devices) == ["cpu:0", "cpu:1"]
        assert any(cell.startswith("tiny") for cell in devices["cpu:0"])  # who holds it
        assert "█" in devices["cpu:0"][1]  # the weights show in the memory bar
        assert "ready" in rows(app, "models")["tiny"]
        with daemon.client() as client:
            client.call("generate", model="tiny", prompt="The daemon serves", max_tokens=16, ignore_eos=True)
        # tokens/s and TTFT come from the daemon's figures: no longer unknown or zero
        await until(pilot, lambda: rows(app, "models")["tiny"][6] not in ("0.0", NONE), "tokens/s")
        await until(pilot, lambda: not rows(app, "models")["tiny"][7].startswith(NONE), "TTFT")

    drive(daemon.runtime_dir, scenario)


def test_generate_streams_into_the_prompt_box(daemon: DaemonProcess) -> None:
    async def scenario(app: MgpudTop, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "tiny" in rows(app, "models"), "the model")
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen), "the prompt box")
        await pilot.press(*"hello", "enter")
        stats = app.screen.query_one("#stats", Label)
        await until(pilot, lambda: "finish" in str(stats.render()), "the end of the generation", LOAD_S)
        assert "tokens" in str(stats.render())
        assert str(app.screen.query_one("#text").render())  # the streamed text
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, PromptScreen), "the box to close")

    drive(daemon.runtime_dir, scenario)


def test_a_daemon_error_is_a_notification(daemon: DaemonProcess, tiny_llama: Path) -> None:
    async def scenario(app: MgpudTop, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "tiny" in rows(app, "models"), "the model")
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LoadModal), "the load dialog")
        app.screen.query_one("#model", Input).value = str(tiny_llama)
        await pilot.press("tab", *"tiny", "enter")  # a name already in use
        await until(pilot, lambda: "already_exists" in toasts(app), "the daemon's error")
        assert "a model named 'tiny' is already" in toasts(app)
        assert isinstance(app.screen, LoadModal) and not app.screen.has_class("-running")  # fix and retry

    drive(daemon.runtime_dir, scenario)


def test_load_scale_and_unload_with_the_keys(daemon: DaemonProcess, tiny_llama: Path) -> None:
    async def scenario(app: MgpudTop, pilot: Pilot[None]) -> None:
        models = app.screen_stack[0].query_one(ModelsTable)
        await until(pilot, lambda: "tiny" in rows(app, "models"), "the model")

        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LoadModal), "the load dialog")
        app.screen.query_one("#model", Input).value = str(tiny_llama)
        await pilot.press("tab", *"second", "tab", "backspace", "1", "tab", "backspace", "1")
        verdict = app.screen.query_one("#verdict")
        await until(pilot, lambda: str(verdict.render()).startswith("✓ fits: tp 1 x dp 1"), "the verdict")
        await pilot.press("enter")
        await until(pilot, lambda: "ready" in rows(app, "models").get("second", []), "the new model", LOAD_S)
        await until(pilot, lambda: not isinstance(app.screen, LoadModal), "the dialog to close")
        await until(pilot, lambda: "second is ready" in toasts(app), "the outcome")
        assert any(cell.startswith("second") for cell in rows(app, "devices")["cpu:1"])

        for _ in range(models.row_count):
            if models.selected == "second":
                break
            await pilot.press("down")
        assert models.selected == "second", rows(app, "models")
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, UnloadModal), "the confirmation")
        await pilot.press("enter")
        await until(pilot, lambda: "second" not in rows(app, "models"), "the unload", LOAD_S)
        await until(pilot, lambda: "second unloaded" in toasts(app), "the outcome")

        await pilot.press("up", "s")
        await until(pilot, lambda: isinstance(app.screen, ScaleModal), "the scale dialog")
        await pilot.press("backspace", "2")  # tp 1 -> 2
        await until(pilot, lambda: str(app.screen.query_one("#verdict").render()).startswith("✓"), "the verdict")
        await pilot.press("enter")
        await until(pilot, lambda: "2x1" in rows(app, "models")["tiny"] or "scale tiny failed" in toasts(app),
                    "the reshard", LOAD_S)
        assert "scale tiny failed" not in toasts(app), f"the reshard failed: {toasts(app)}"
        await until(pilot, lambda: not isinstance(app.screen, ScaleModal), "the dialog to close")
        await until(pilot, lambda: "tiny rescaled" in toasts(app), "the outcome")
        await until(pilot, lambda: rows(app, "models")["tiny"][1:4] == ["2x1", "cpu:0,cpu:1", "ready"],
                    "the new shape, serving")

    drive(daemon.runtime_dir, scenario)


def test_a_daemon_that_goes_and_comes_back(tmp_path: Path) -> None:
    """No daemon yet: a banner; it starts: the screen fills; it dies: the banner again;
    it restarts: reconnected, without a restart of the dashboard."""
    daemon = DaemonProcess()

    async def planner_answers(app: MgpudTop, pilot: Pilot[None]) -> None:
        """A command round trip: the load dialog's verdict."""
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LoadModal), "the load dialog")
        verdict = app.screen.query_one("#verdict")
        await until(pilot, lambda: str(verdict.render())[:1] in ("✓", "✗"), "the planner")
        await pilot.press("escape")

    async def scenario(app: MgpudTop, pilot: Pilot[None]) -> None:
        banner = app.screen_stack[0].query_one("#banner")
        await until(pilot, lambda: banner.display and "DAEMON UNREACHABLE" in str(banner.render()), "the banner")
        await asyncio.to_thread(daemon.start)
        await until(pilot, lambda: not banner.display and rows(app, "devices"), "the reconnection")
        await planner_answers(app, pilot)
        daemon.proc.kill()  # no goodbye: the dashboard notices the silence
        await until(pilot, lambda: banner.display, "the banner after a crash")
        await asyncio.to_thread(daemon.start)
        await until(pilot, lambda: not banner.display, "the reconnection after a restart")
        await planner_answers(app, pilot)  # the command connection came back too

    try:
        drive(daemon.runtime_dir, scenario)
    finally:
        daemon.close()
