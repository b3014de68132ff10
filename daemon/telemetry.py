"""Device readings and the telemetry published on the events socket.

Readings (NVML calls, worker RSS) run in a thread: a slow driver call must not stall
the control loop. Operations that show devices use the latest reading, at most one
telemetry interval old.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from mgpud.records import Device, ModelRecord, ReplicaFigures


class Telemetry:
    def __init__(self, devices: list[Device]) -> None:
        self.devices = devices

    async def refresh(self, models: list[ModelRecord]) -> None:
        """Read the devices again; `models` say which workers run where."""
        from mgpud.engine.hosts.inventory import refresh

        pids = {device: replica.pids[rank:rank + 1] for device, (_, replica, rank) in holders(models).items()}
        self.devices = await asyncio.to_thread(refresh, self.devices, pids)

    def device_rows(self, models: list[ModelRecord]) -> list[Device]:
        owners = holders(models)
        return [_device_row(d, *owners.get(d.id, (None, None, None))) for d in self.devices]


def holders(models: list[ModelRecord]) -> dict[str, tuple[str, ReplicaFigures, int]]:
    """Device id -> (model name, the replica's figures, the rank on the device)."""
    return {device: (m.name, replica, rank)
            for m in models if m.stats
            for replica in m.stats.replicas
            for rank, device in enumerate(replica.devices)}


def _device_row(device: Device, model: str | None, replica: ReplicaFigures | None, rank: int | None) -> Device:
    """The device with the model, replica and rank on it, and its memory split."""
    from mgpud.engine.hosts.inventory import memory_breakdown

    row = replace(device, model=model, replica=replica.index if replica else None, rank=rank)
    if device.memory_total is None or device.memory_used is None:
        return row
    weights = kv = kv_used = kv_touched = activations = graphs = 0
    if replica is not None and rank is not None and replica.weight_bytes_per_rank:
        weights = replica.weight_bytes_per_rank[rank]
        kv = replica.kv_bytes_per_rank or 0
        activations = replica.peak_activation_bytes_per_rank[rank]
        graphs = replica.graph_bytes_per_rank[rank]
        if replica.kv_blocks_total:
            kv_used = kv * replica.kv_blocks_used // replica.kv_blocks_total
            kv_touched = kv * replica.kv_blocks_touched // replica.kv_blocks_total
    row.memory = memory_breakdown(device.memory_total, device.memory_used, weights, kv, kv_used, activations,
                                  kv_touched, graphs)
    return row
