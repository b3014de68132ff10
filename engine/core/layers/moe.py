"""A sparse mixture-of-experts MLP over the tp ranks of a replica, in one of two placements.

TP-sharded (the default): every rank holds every expert, sliced along the intermediate
dimension as a dense MLP is, and runs every active expert on its slice.
Expert parallel: rank r holds whole experts, the contiguous block {e : e * tp // E == r}
(`expert_owner`), reads only their bytes, and runs only those experts; it needs at least
tp experts (checked with the shape: engine/planning/shapes.py).

Either way the activations are the same on every rank, so every rank routes every token
itself (the router is replicated) and computes a partial output; one all-reduce per layer
sums the partials. Expert parallel needs no all-to-all dispatch here: attention is tensor
parallel, so a token's activation is already on every rank, and only the combine moves
data. gloo (torch 2.13) does have `all_to_all_single` for CPU tensors, but an all-to-all
dispatch and combine would move at least the bytes of this one all-reduce and add a second
collective; benchmarks/moe_combine.py times both.

Per-expert token counts accumulate in `tokens_per_expert` (one tensor add per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ModelConfig
from .. import kernels
from ..parallel import TPGroup, split_range
from .linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear


def expert_owner(expert: int, num_experts: int, tp: int) -> int:
    """The rank that holds `expert` under expert parallelism: contiguous blocks of experts."""
    return expert * tp // num_experts


@dataclass(frozen=True)
class ExpertPlacement:
    """What one rank holds: experts [first, first + count), intermediate rows [start, end)."""

    first: int
    count: int
    start: int
    end: int

    @classmethod
    def of(cls, num_experts: int, intermediate: int, group: TPGroup, expert_parallel: bool) -> ExpertPlacement:
        if not expert_parallel:
            return cls(0, num_experts, *split_range(intermediate, group.rank, group.size))
        owned = [e for e in range(num_experts) if expert_owner(e, num_experts, group.size) == group.rank]
        return cls(owned[0], len(owned), 0, intermediate)

    @property
    def width(self) -> int:
        return self.end - self.start


def balance(counts: torch.Tensor, units: int) -> float | None:
    """vLLM EPLB's balancedness of per-layer per-expert token counts [layers, E]: the load of
    each of `units` (EP ranks holding contiguous expert blocks; units = E: the experts
    themselves), mean over max per layer, averaged over the layers that saw tokens.
    1.0 is perfect balance; 1 / units, every token on one unit. None before any token."""
    experts = counts.shape[1]
    owner = torch.arange(experts) * units // experts
    loads = torch.zeros(counts.shape[0], units).index_add_(1, owner, counts.float())
    peak = loads.max(dim=1).values
    seen = peak > 0
    if not bool(seen.any()):
        return None
    return float((loads.mean(dim=1)[seen] / peak[seen]).mean())


class StackedExperts(nn.Module):
    """One projection of this rank's experts as one tensor: gate/up [experts, 2 * width, H]
    (gate rows, then up rows, as the dense MLP fuses them) or down [experts, H, width]."""

    def __init__(self, place: ExpertPlacement, hidden: int, down: bool, dtype: torch.dtype):
        super().__init__()
        self.place, self.down = place, down
        shape = (place.count, hidden, place.width) if down else (place.count, 2 * place.width, hidden)
        self.weight = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self._load

    def _load(self, param: nn.Parameter, source: Any, shard: tuple[int, int]) -> None:
        """`source` is expert `shard[0]`'s checkpoint tensor, part `shard[1]` (0 gate, 1 up);
        another rank's expert is skipped without reading its bytes."""
        expert, part = shard
        local, p = expert - self.place.first, self.place
        if not 0 <= local < p.count:
            return
        if self.down:
            param.data[local].copy_(source[:, p.start:p.end])
        else:
            param.data[local, part * p.width:(part + 1) * p.width].copy_(source[p.start:p.end])


class SparseMoE(nn.Module):
    """Router, routed experts and (Qwen2-MoE) a shared expert under a sigmoid gate."""

    def __init__(self, cfg: ModelConfig, group: TPGroup, dtype: torch.dtype, expert_parallel: bool):
        super().__init__()
        h, n = cfg.hidden_size, cfg.num_experts
        self.group, self.top_k, self.renormalise = group, cfg.experts_per_token, cfg.norm_topk_prob
        self.place = ExpertPlacement.of(n, cfg.moe_intermediate_size, group, expert_parallel)
        self.gate = ReplicatedLinear(h, n, dtype)
        self.experts = nn.Module()
        self.experts.gate_up_proj = StackedExperts(self.place, h, down=False, dtype=dtype)
        self.experts.down_proj = StackedExperts(self.place, h, down=True, dtype=dtype)
        self.register_buffer("tokens_per_expert", torch.zeros(n, dtype=torch.int64), persistent=False)
        shared = cfg.shared_expert_intermediate_size
        self.shared_expert: nn.Module | None = None
        if shared:
            self.shared_expert = nn.Module()
            self.shared_expert.gate_up_proj = ColumnParallelLinear(h, [shared, shared], group, bias=False, dtype=dtype)
            self.shared_expert.down_proj = RowParallelLinear(shared, h, group, dtype)
            self.shared_expert_gate = ReplicatedLinear(h, 1, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalise:
            weights /= weights.sum(dim=-1, keepdim=True)
        out = self._routed(x, weights.to(x.dtype), chosen)
        if self.shared_expert is not None:
            s = self.shared_expert
            part = s.down_proj.partial(kernels.silu_and_mul(s.gate_up_proj(x)))
            # The gate scales every rank's addend alike, so one all-reduce still suffices.
            out += torch.sigmoid(self.shared_expert_gate(x)) * part
        return self.group.all_reduce(out)

    def _routed(self, x: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """This rank's partial sum of its experts' outputs: the (token, choice) pairs sorted
        by expert, then one matmul pair per active local expert."""
        flat = chosen.flatten()
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.tokens_per_expert.numel())
        self.tokens_per_expert += counts
        p = self.place
        local = counts[p.first:p.first + p.count].tolist()
        begin = int(counts[:p.first].sum())
        pairs = order[begin:begin + sum(local)]
        tokens = torch.div(pairs, self.top_k, rounding_mode="floor")
        rows = x[tokens]
        outs, offset = [], 0
        gate_up, down = self.experts.gate_up_proj.weight, self.experts.down_proj.weight
        for e, n in enumerate(local):
            if n:
                seg = rows[offset:offset + n]
                outs.append(F.linear(kernels.silu_and_mul(F.linear(seg, gate_up[e])), down[e]))
                offset += n
        out = torch.zeros_like(x)
        if outs:
            scaled = torch.cat(outs) * weights.flatten()[pairs, None]
            out.index_add_(0, tokens, scaled)
        return out
