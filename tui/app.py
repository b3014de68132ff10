"""`mgpud top`: the dashboard application and its entry point."""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.screen import Screen

from mgpud.ipc import AsyncClient

from .dashboard import Dashboard

# Telemetry comes twice a second: this much silence means the daemon is gone or hung.
CLIENT_TIMEOUT = 3.0  # seconds


class MgpudTop(App[None]):
    CSS_PATH = "mgpud.tcss"
    TITLE = "mgpud top"
    ENABLE_COMMAND_PALETTE = False  # every action has its key; the palette would only add noise

    def __init__(self, client: AsyncClient) -> None:
        super().__init__()
        self.client = client

    def get_default_screen(self) -> Screen[None]:
        return Dashboard(self.client)

    async def on_unmount(self) -> None:
        await self.client.close()


def run(runtime_dir: str | Path | None = None) -> int:
    """Run the dashboard against the daemon of `runtime_dir` (None: the usual resolution,
    see mgpud.ipc.paths) until the user quits; the exit code."""
    MgpudTop(AsyncClient(runtime_dir, timeout=CLIENT_TIMEOUT)).run()
    return 0
