"""Device readings and the telemetry published on the events socket.

Readings (NVML calls, worker RSS) run in a thread: a slow driver call must not stall
the control loop. Operations that show devices use the latest reading, at most one
telemetry interval old.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mgpud.engine.devices import Device

    from .models import ModelGroup, ModelManager

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, devices: list[Device], models: ModelManager) -> None:
        self.devices = devices
        self._models = models

    async def refresh(self) -> None:
        from mgpud.engine.devices import refresh

        pids = {device_id: [group.engine.info["pids"][rank]]
                for device_id, (group, rank) in self._models.holders().items() if group.engine}
        self.devices = await asyncio.to_thread(refresh, self.devices, pids)

    def device_rows(self) -> list[dict[str, Any]]:
        holders = self._models.holders()
        return [_device_row(d, *holders.get(d.id, (None, None))) for d in self.devices]

    def snapshot(self) -> dict[str, Any]:
        return {"devices": self.device_rows(), "models": [g.describe() for g in self._models.groups.values()]}


def _device_row(device: Device, group: ModelGroup | None, rank: int | None) -> dict[str, Any]:
    from mgpud.engine.devices import memory_breakdown

    row = device.to_dict()
    row["model"] = group.name if group else None
    row["rank"] = rank
    row["memory"] = None
    if device.memory_total is None or device.memory_used is None:
        return row
    weights = kv = kv_used = activations = 0
    if group is not None and group.engine is not None and rank is not None:
        info, stats = group.engine.info, group.engine.stats()
        weights = info["weight_bytes_per_rank"][rank]
        kv = info["kv_bytes_per_rank"]
        activations = info["peak_activation_bytes_per_rank"][rank]
        if stats.get("kv_blocks_total"):
            kv_used = kv * stats["kv_blocks_used"] // stats["kv_blocks_total"]
    row["memory"] = asdict(memory_breakdown(device.memory_total, device.memory_used, weights, kv, kv_used,
                                     activations))
    return row
