"""Token selection on rank 0: greedy, or temperature / top-k / top-p sampling per request."""

from __future__ import annotations

import torch

from ..sequence import Sequence


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0 and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the tokens before it already cover top_p.
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits [S, vocab] float, one row per sequence in `seqs` -> one token id each."""
    tokens = logits.argmax(dim=-1).tolist()
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.temperature == 0:
            continue
        # Seeded generators live on the CPU; one row's logits are cheap to bring over.
        scaled = _filter(logits[row].float().cpu() / p.temperature, p.top_k, p.top_p)
        probs = torch.softmax(scaled, dim=-1)
        tokens[row] = int(torch.multinomial(probs, 1, generator=seq.generator))
    return tokens
