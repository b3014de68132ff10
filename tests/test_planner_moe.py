"""The planner on mixture-of-experts models: parameter counts against the published ones,
MLA's KV cache, expert parallelism's placement and traffic, and refusals."""

from __future__ import annotations

import pytest
from mgpud.engine.config import ModelConfig
from mgpud.engine.planning.planner import PlanError, plan
from mgpud.engine.planning.presets import MODEL_PRESETS, model_preset

# (preset, total, active) parameters as their model cards publish them.
PUBLISHED = [("Mixtral-8x7B", 46.7e9, 12.9e9), ("Qwen3-30B-A3B", 30.5e9, 3.3e9),
             ("Qwen3-235B-A22B", 235e9, 22e9), ("DeepSeek-V3", 671e9, 37e9), ("gpt-oss-120b", 116.8e9, None)]


@pytest.mark.parametrize("name, total, active", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_parameter_counts_match_the_model_cards(name: str, total: float, active: float | None) -> None:
    cfg = model_preset(name)
    assert cfg.param_count() == pytest.approx(total, rel=0.02)
    if active is not None:  # gpt-oss's card counts its active parameters otherwise
        assert cfg.param_count(active=True) == pytest.approx(active, rel=0.03)


def test_deepseek_v3_kv_is_one_latent_per_token_and_layer() -> None:
    cfg = model_preset("DeepSeek-V3")
    # (kv_lora_rank 512 + qk_rope_head_dim 64) x 61 layers x 2 bytes, the same on every rank.
    assert cfg.kv_bytes_per_token(2) == cfg.kv_bytes_per_token(2, tp=8) == 576 * 61 * 2


def test_a_hand_written_deepseek_v3_config_does_not_fit_one_h100() -> None:
    verdict = plan(model_preset("DeepSeek-V3"), "1xH100-80GB")
    assert not verdict.ok and verdict.params > 660e9
    assert "exceed" in verdict.reasons[0]
    assert any("does not serve it yet" in n for n in verdict.notes)


def test_an_architecture_the_planner_cannot_model_is_refused() -> None:
    raw = {**MODEL_PRESETS["Llama-3.1-8B"], "architectures": ["JambaForCausalLM"]}
    with pytest.raises(PlanError, match="cannot model architecture JambaForCausalLM.*it models LlamaForCausalLM"):
        plan(ModelConfig.from_dict(raw), "1xH100-80GB")


def test_expert_parallel_trades_all_reduces_for_all_to_all() -> None:
    sharded = plan("Qwen3-30B-A3B", "4xH100-80GB", tp=4).chosen_shape
    ep = plan("Qwen3-30B-A3B", "4xH100-80GB", tp=4, enable_expert_parallel=True).chosen_shape
    # 128 experts split evenly: the same bytes per device either way.
    assert ep.weights_per_device == sharded.weights_per_device
    # bf16 hidden 2048 over a 4-ring: 2 x 3/4 x 4 KiB per all-reduce; 48 layers x 2 of them,
    # of which EP keeps only the attention's 48.
    assert sharded.allreduce_bytes_per_token == 96 * 6144 and ep.allreduce_bytes_per_token == 48 * 6144
    # EP: 48 MoE layers x (dispatch + combine) x top-8 x 3/4 remote x 4 KiB.
    assert ep.all_to_all_bytes_per_token == 48 * 2 * 8 * 3 * 4096 // 4 and sharded.all_to_all_bytes_per_token == 0


def test_expert_parallel_counts_the_fullest_rank_s_whole_experts() -> None:
    """6 experts on 4 ranks: blocks of 2, 1, 2, 1 (expert e on rank e * 4 // 6); the fullest
    rank holds 2 experts where TP-sharding gives every rank 1.5."""
    cfg = ModelConfig.from_dict({**MODEL_PRESETS["Mixtral-8x7B"], "num_local_experts": 6})
    sharded = plan(cfg, "4xH100-80GB", tp=4).chosen_shape.weights_per_device
    ep = plan(cfg, "4xH100-80GB", tp=4, enable_expert_parallel=True).chosen_shape.weights_per_device
    expert = 3 * 4096 * 14336 * 2  # bf16 bytes of one expert
    assert ep - sharded == 32 * expert // 2


def test_expert_parallel_is_refused_for_a_dense_model() -> None:
    with pytest.raises(PlanError, match="needs a mixture-of-experts model"):
        plan("Llama-3.1-8B", "2xH100-80GB", enable_expert_parallel=True)
