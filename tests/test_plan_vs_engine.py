"""The planner's figures agree with what a loaded model really holds on its devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgpud.engine import EngineConfig, ModelGroup
from mgpud.engine.planning.planner import plan

# Large enough that KV dominates: the resident runtime differs by ~100 MB between CPUs,
# which at 2 GiB devices alone moved the KV figure ~10%.
DEVICE_MEMORY = 4 << 30


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 3])
def test_demo_model_memory_matches_the_plan(demo_model: Path, tp: int) -> None:
    cfg = EngineConfig(model=str(demo_model), tp=tp, max_model_len=2048, device_memory=DEVICE_MEMORY,
                       max_num_batched_tokens=512)
    with ModelGroup(cfg) as eng:
        info = eng.stats().replicas[0]
    verdict = plan(demo_model, f"cpu:{tp}", max_model_len=2048, device_memory=DEVICE_MEMORY,
                   memory_utilization=cfg.memory_utilization, max_num_batched_tokens=cfg.max_num_batched_tokens,
                   max_num_seqs=cfg.max_num_seqs)
    shape = next(s for s in verdict.shapes if s.tp == tp and s.dp == 1)
    for weights in info.weight_bytes_per_rank:
        assert abs(weights - shape.weights_per_device) <= 0.10 * shape.weights_per_device
    kv_tokens = info.num_kv_blocks * info.block_size
    assert abs(kv_tokens - shape.kv_tokens) <= 0.10 * shape.kv_tokens, (kv_tokens, shape.kv_tokens)
