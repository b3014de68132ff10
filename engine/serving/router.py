"""Choosing a replica for each request: least loaded first, rotating among equals so a
burst spreads out, and back to the replica that cached a prompt's prefix while its load
stays close to the lightest."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Protocol

AFFINITY_SLACK = 2.0  # extra load a prefix-holding replica may carry and still be chosen
AFFINITY_ENTRIES = 4096


class Candidate(Protocol):
    index: int

    def load(self) -> float: ...


class Router:
    def __init__(self, block_size: int):
        self.block_size = block_size
        self._turn = itertools.count()
        self._prefix_owner: OrderedDict[int, int] = OrderedDict()  # prefix hash -> replica index

    def _prefix_key(self, ids: list[int]) -> int | None:
        if len(ids) <= self.block_size:
            return None  # nothing a replica could have cached
        return hash(tuple(ids[:self.block_size * ((len(ids) - 1) // self.block_size)][:4 * self.block_size]))

    def pick(self, replicas: list[Candidate], ids: list[int]) -> Candidate:
        start = next(self._turn) % len(replicas)
        rotated = replicas[start:] + replicas[:start]
        loads = {r.index: r.load() for r in rotated}
        best = min(rotated, key=lambda r: loads[r.index])
        key = self._prefix_key(ids)
        owner = self._prefix_owner.get(key) if key is not None else None
        for r in rotated:
            if r.index == owner and loads[r.index] <= loads[best.index] + AFFINITY_SLACK:
                best = r
        if key is not None:
            self._prefix_owner[key] = best.index
            self._prefix_owner.move_to_end(key)
            if len(self._prefix_owner) > AFFINITY_ENTRIES:
                self._prefix_owner.popitem(last=False)
        return best
