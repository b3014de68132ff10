"""Device readings and the telemetry published on the events socket.

Readings (NVML calls, worker RSS) run in a thread: a slow driver call must not stall
the control loop. Operations that show devices use the latest reading, at most one
telemetry interval old.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mgpud.engine.devices import Device


class Telemetry:
    def __init__(self, devices: list[Device]) -> None:
        self.devices = devices

    async def refresh(self, models: list[dict[str, Any]]) -> None:
        """Read the devices again; `models` (descriptions) say which workers run where."""
        from mgpud.engine.devices import refresh

        pids = {device: replica["pids"][rank:rank + 1] for device, (_, replica, rank) in holders(models).items()}
        self.devices = await asyncio.to_thread(refresh, self.devices, pids)

    def device_rows(self, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
        owners = holders(models)
        return [_device_row(d, *owners.get(d.id, (None, None, None))) for d in self.devices]


def holders(models: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any], int]]:
    """Device id -> (model name, the replica's description, the rank on the device)."""
    return {device: (m["name"], replica, rank)
            for m in models if m["stats"]
            for replica in m["stats"]["replicas"]
            for rank, device in enumerate(replica["devices"])}


def _device_row(device: Device, model: str | None, replica: dict[str, Any] | None,
                rank: int | None) -> dict[str, Any]:
    from mgpud.engine.devices import memory_breakdown

    row = device.to_dict() | {"model": model, "replica": replica["index"] if replica else None,
                              "rank": rank, "memory": None}
    if device.memory_total is None or device.memory_used is None:
        return row
    weights = kv = kv_used = activations = 0
    if replica is not None and rank is not None and replica["weight_bytes_per_rank"]:
        weights = replica["weight_bytes_per_rank"][rank]
        kv = replica["kv_bytes_per_rank"]
        activations = replica["peak_activation_bytes_per_rank"][rank]
        if replica.get("kv_blocks_total"):
            kv_used = kv * replica["kv_blocks_used"] // replica["kv_blocks_total"]
    row["memory"] = asdict(memory_breakdown(device.memory_total, device.memory_used, weights, kv,
                                            kv_used, activations))
    return row
