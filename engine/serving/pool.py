"""The devices of one host, handed out to replicas: a replica owns its devices alone; and
the host's warm worker processes, for the replicas' ranks to start on."""

from __future__ import annotations

import threading

from ..core.warm import WarmPool
from ..exceptions import ModelLoadError


class DevicePool:
    def __init__(self, devices: list[str], workers: WarmPool | None = None):
        self.devices = list(devices)
        self.workers = workers
        self._free = list(devices)
        self._lock = threading.Lock()

    @property
    def free(self) -> list[str]:
        with self._lock:
            return list(self._free)

    def take(self, count: int, wanted: list[str] | None = None) -> list[str]:
        """`count` free devices: `wanted` if given, else the first contiguous run that fits."""
        with self._lock:
            if wanted is not None:
                busy = [d for d in wanted if d not in self._free]
                if busy or len(wanted) != count:
                    raise ModelLoadError(f"devices {', '.join(busy) or wanted} are not free "
                                         f"(free: {', '.join(self._free) or 'none'})")
                chosen = list(wanted)
            else:
                chosen = self._contiguous(count)
            for d in chosen:
                self._free.remove(d)
            return chosen

    def _contiguous(self, count: int) -> list[str]:
        order = [d for d in self.devices if d in self._free]
        for start in range(len(self.devices) - count + 1):
            run = self.devices[start:start + count]
            if all(d in self._free for d in run):
                return run
        if len(order) < count:
            raise ModelLoadError(f"{count} device(s) needed but only {len(order)} free "
                                 f"({', '.join(order) or 'none'} of {len(self.devices)})")
        return order[:count]

    def give(self, devices: list[str]) -> None:
        with self._lock:
            for d in devices:
                if d not in self._free:
                    self._free.append(d)
            self._free.sort(key=self.devices.index)
