"""Log-probabilities on rank 0, from the float32 logits of a step: of the sampled tokens,
and of prompt tokens (computed in the prefill's own forward pass)."""

from __future__ import annotations

import torch

from ..outputs import TokenLogprob
from ..sequence import Sequence


def token_logprobs(logits: torch.Tensor, targets: list[int], tops: list[int]) -> list[TokenLogprob]:
    """Row i of logits [N, vocab]: the logprob of targets[i] and the tops[i] likeliest tokens.
    One log_softmax, one gather and one top-k over all rows; one copy to the host each."""
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(1, torch.tensor(targets, device=logp.device).unsqueeze(1)).squeeze(1).tolist()
    values, ids = logp.topk(max(tops), dim=-1)
    values, ids = values.tolist(), ids.tolist()
    return [TokenLogprob(t, lp, list(zip(ids[i][:k], values[i][:k])))
            for i, (t, lp, k) in enumerate(zip(targets, picked, tops))]


def sampled_logprobs(logits: torch.Tensor, seqs: list[Sequence], tokens: list[int]) -> list[TokenLogprob | None]:
    """For each sampling row (one per seq), the sampled token's logprob where it was asked for."""
    out: list[TokenLogprob | None] = [None] * len(seqs)
    asked = [i for i, seq in enumerate(seqs) if seq.params.logprobs is not None]
    if asked:
        found = token_logprobs(logits[asked], [tokens[i] for i in asked], [seqs[i].params.logprobs for i in asked])
        for i, lp in zip(asked, found):
            out[i] = lp
    return out


def record_prompt_logprobs(batch: list[tuple[Sequence, int]], logits: torch.Tensor) -> None:
    """Append this step's prompt logprobs to their sequences; `logits` holds the rows of
    StepInput.prompt_logits_indices. Call before the scheduler counts the step as computed."""
    wanted = [(seq, p) for seq, n in batch for p in seq.prompt_logprob_positions(n)]
    targets = [seq.token_ids[p + 1] for seq, p in wanted]
    found = token_logprobs(logits, targets, [seq.params.prompt_logprobs for seq, _ in wanted])
    for (seq, _), lp in zip(wanted, found):
        seq.prompt_logprobs.append(lp)
