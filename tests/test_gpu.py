"""The CUDA path (Triton kernels, NCCL): run where a GPU exists, skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mgpud.engine import EngineConfig, ModelGroup, SamplingParams
from oracle import hf_greedy

pytestmark = pytest.mark.gpu
PROMPTS = [[5, 6, 7, 8], list(range(10, 60)), [300]]


def _greedy_matches(model: Path, tp: int) -> None:
    cfg = EngineConfig(model=str(model), tp=tp, dtype="float32", max_model_len=256,
                       kv_cache_memory=64 << 20, max_num_batched_tokens=32)
    with ModelGroup(cfg) as eng:
        assert all(d.startswith("cuda") for d in eng.stats().replicas[0].devices)
        results = eng.generate(PROMPTS, SamplingParams(max_tokens=24))
    for prompt, (ids, _, _) in zip(PROMPTS, results):
        assert ids == hf_greedy(model, prompt, 24)


def test_cuda_tp1_greedy_matches_transformers(tiny_llama: Path) -> None:
    _greedy_matches(tiny_llama, 1)


def test_nccl_tp2_greedy_matches_transformers(tiny_llama: Path) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    _greedy_matches(tiny_llama, 2)


def test_bfloat16_default_on_cuda_serves(tiny_llama: Path) -> None:
    with ModelGroup(EngineConfig(model=str(tiny_llama), max_model_len=128, kv_cache_memory=16 << 20)) as eng:
        assert eng.stats().replicas[0].dtype == "bfloat16"
        ids, _, final = eng.stream([5, 6, 7], params=SamplingParams(max_tokens=8, ignore_eos=True)).result()
        assert len(ids) == 8 and final.finish_reason == "length"


# -- Triton kernels against their torch references at real model sizes (Llama-3-8B shapes) ---

HIDDEN, INTER, NQ, NKV, HEAD_DIM, BLOCK = 4096, 14336, 32, 8, 128, 16
BF16 = {"atol": 1.6e-2, "rtol": 1.6e-2}  # about two bf16 ulps: both sides round once from float32


def _bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device="cuda").to(torch.bfloat16)


def test_norm_and_activation_kernels_at_model_size() -> None:
    from mgpud.engine.core.kernels import reference, triton_activation, triton_norm

    torch.manual_seed(0)
    x, residual, weight = _bf16(512, HIDDEN), _bf16(512, HIDDEN), _bf16(HIDDEN)
    torch.testing.assert_close(triton_norm.rms_norm(x, weight, 1e-5), reference.rms_norm(x, weight, 1e-5), **BF16)
    got = triton_norm.add_rms_norm(x.clone(), residual.clone(), weight, 1e-5)
    want = reference.add_rms_norm(x.clone(), residual.clone(), weight, 1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **BF16)
    gate_up = _bf16(512, 2 * INTER)
    torch.testing.assert_close(triton_activation.silu_and_mul(gate_up), reference.silu_and_mul(gate_up), **BF16)


def test_rotary_and_cache_kernels_at_model_size() -> None:
    from mgpud.engine.core.kernels import reference, triton_cache, triton_rotary

    torch.manual_seed(0)
    tokens = 512
    cache = reference.build_rotary_cache(HEAD_DIM, 8192, 500000.0, None, device="cuda")
    q, k = _bf16(tokens, NQ, HEAD_DIM), _bf16(tokens, NKV, HEAD_DIM)
    positions = torch.randint(0, 8192, (tokens,), device="cuda")
    q_ref, k_ref = q.clone(), k.clone()
    triton_rotary.apply_rotary(q, k, positions, cache)
    reference.apply_rotary(q_ref, k_ref, positions, cache)
    torch.testing.assert_close(q, q_ref, **BF16)
    torch.testing.assert_close(k, k_ref, **BF16)
    blocks = 256
    slots = torch.randperm(blocks * BLOCK, device="cuda")[:tokens]
    slots[::7] = -1  # tokens whose KV is not kept
    caches = [torch.zeros(blocks, BLOCK, NKV, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    triton_cache.store_kv(k, k, caches[0], caches[1], slots)
    reference.store_kv(k, k, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


@pytest.mark.parametrize("batch, context, width", [(1, 8000, 512), (64, 1000, 64), (256, 300, 512)])
def test_paged_decode_attention_at_model_size(batch: int, context: int, width: int) -> None:
    """Contexts of varied lengths; `width` table columns as a CUDA graph's fixed-width table
    has them (far more than the contexts need), and one padding row of context 0."""
    from mgpud.engine.core.kernels import reference, triton_attention

    torch.manual_seed(0)
    lens = torch.randint(1, context + 1, (batch,), device="cuda", dtype=torch.int32)
    if batch > 1:
        lens[-1] = 0
    per_seq = -(-context // BLOCK)
    k_cache, v_cache = _bf16(batch * per_seq + 1, BLOCK, NKV, HEAD_DIM), _bf16(batch * per_seq + 1, BLOCK, NKV, HEAD_DIM)
    tables = torch.zeros(batch, width, dtype=torch.int32, device="cuda")
    tables[:, :per_seq] = torch.randperm(batch * per_seq + 1, device="cuda")[:batch * per_seq].view(batch, per_seq)
    q = _bf16(batch, NQ, HEAD_DIM)
    got = triton_attention.paged_decode_attention(q, k_cache, v_cache, tables, lens, HEAD_DIM ** -0.5)
    real = lens > 0
    want = reference.paged_decode_attention(q[real], k_cache, v_cache, tables[real, :per_seq], lens[real],
                                            HEAD_DIM ** -0.5)
    torch.testing.assert_close(got[real], want, **BF16)
    assert torch.equal(got[~real], torch.zeros_like(got[~real]))


# -- CUDA graphs ------------------------------------------------------------------------------

GRAPH_PROMPTS = [[5, 6, 7, 8], list(range(10, 60)), [300], list(range(100, 400)), [42, 43]]


def _demo_tokens(demo: Path, eager: bool, prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    cfg = EngineConfig(model=str(demo), dtype="float32", max_model_len=512, max_num_seqs=32,
                       kv_cache_memory=256 << 20, enforce_eager=eager)
    with ModelGroup(cfg) as eng:
        graph_bytes = eng.stats().replicas[0].graph_bytes_per_rank
        batched = eng.generate(prompts, SamplingParams(max_tokens=40, ignore_eos=True))
        alone = eng.generate(prompts[:1], SamplingParams(max_tokens=40, ignore_eos=True))
    return [ids for ids, _, _ in batched + alone], graph_bytes


def test_graphs_and_eager_give_the_same_tokens(demo_model: Path) -> None:
    """Batches of 5 (bucket 8, three padding rows) and of 1 replay graphs; eager must agree."""
    eager, eager_bytes = _demo_tokens(demo_model, True, GRAPH_PROMPTS)
    graphs, graph_bytes = _demo_tokens(demo_model, False, GRAPH_PROMPTS)
    assert eager_bytes == [0] and graph_bytes[0] > 0
    assert graphs == eager


def test_graph_memory_is_profiled_and_shown(demo_model: Path) -> None:
    cfg = EngineConfig(model=str(demo_model), max_model_len=1024, max_num_seqs=64, memory_utilization=0.5)
    with ModelGroup(cfg) as eng:
        replica = eng.stats().replicas[0]
        ids, _, _ = eng.stream([5, 6, 7], params=SamplingParams(max_tokens=8, ignore_eos=True)).result()
    assert len(ids) == 8
    assert 0 < replica.graph_bytes_per_rank[0] < 2 << 30
    total = torch.cuda.get_device_properties(0).total_memory
    used = replica.weight_bytes_per_rank[0] + replica.kv_bytes_per_rank + replica.peak_activation_bytes_per_rank[0]
    assert used + replica.graph_bytes_per_rank[0] <= 0.5 * total


# -- NVML --------------------------------------------------------------------------------------

def test_nvml_telemetry_reads_a_real_device() -> None:
    from mgpud.engine.hosts.inventory import discover, refresh

    device = refresh(discover("auto"))[0]
    assert device.kind == "cuda" and device.available, device.error
    assert device.memory_total == pytest.approx(torch.cuda.get_device_properties(0).total_memory, rel=0.05)
    assert device.memory_used is not None and device.memory_free is not None
    readings = {"utilization": device.utilization, "temperature": device.temperature, "power": device.power}
    assert all(v is not None for v in readings.values()), device.unavailable
