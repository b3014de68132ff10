"""Kernels: Triton against the torch reference, and the reference against plain math.

Without a GPU the Triton kernels run under the interpreter (300-3000x slower than torch),
hence the tiny shapes. Tolerances: float32 results agree to 1e-5 (attention: 2e-5);
bfloat16 results to about two bf16 ulps (rtol 1.6e-2): both sides compute in float32 and
differ in summation order before the final rounding, and the interpreter truncates
float32 -> bfloat16 casts where GPUs round to nearest.
"""

import os

import torch

if not torch.cuda.is_available():
    # Must precede the first import of a Triton kernel module (their @triton.jit); a value
    # already set wins, which lets one test compile the kernels for real in a subprocess.
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess
import sys

import pytest

# The Triton kernels are this module's subject: without triton, skip it rather than fail
# its collection. Only after TRITON_INTERPRET is set (above), which must come first.
pytest.importorskip("triton")

import mgpud.engine.core.kernels as kernels
from mgpud.engine.core.kernels import (reference, triton_activation, triton_attention, triton_cache,
                                     triton_norm, triton_rotary)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]
TOLERANCE = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}
ATTENTION_TOLERANCE = {
    torch.float32: {"atol": 2e-5, "rtol": 2e-5},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE).to(dtype)


def _split_qkv(qkv: torch.Tensor, nq: int, nkv: int, d: int):
    """q, k, v as the strided views of a fused QKV projection's output."""
    tokens = qkv.shape[0]
    q = qkv[:, : nq * d].view(tokens, nq, d)
    k = qkv[:, nq * d : (nq + nkv) * d].view(tokens, nkv, d)
    v = qkv[:, (nq + nkv) * d :].view(tokens, nkv, d)
    return q, k, v


def _fused_qkv(tokens: int, nq: int, nkv: int, d: int, dtype: torch.dtype):
    qkv = _randn(tokens, (nq + 2 * nkv) * d, dtype=dtype)
    return (qkv, *_split_qkv(qkv, nq, nkv, d))


# ---------------------------------------------------------------- Triton vs reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(3, 576), (1, 64)])
def test_rms_norm_triton(dtype: torch.dtype, tokens: int, hidden: int) -> None:
    # A row stride wider than the row, as in a slice of a larger activation.
    x = _randn(tokens, hidden + 8, dtype=dtype)[:, :hidden]
    weight = (1 + 0.1 * _randn(hidden)).to(dtype)
    got = triton_norm.rms_norm(x, weight, 1e-6)
    want = reference.rms_norm(x, weight, 1e-6)
    assert got.dtype == dtype and got.shape == (tokens, hidden)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_triton(dtype: torch.dtype) -> None:
    x, residual = _randn(3, 576, dtype=dtype), _randn(3, 576, dtype=dtype)
    weight = (1 + 0.1 * _randn(576)).to(dtype)
    want_normed, want_sum = reference.add_rms_norm(x, residual, weight, 1e-5)
    normed, summed = triton_norm.add_rms_norm(x.clone(), residual.clone(), weight, 1e-5)
    # On a GPU the sum is rounded to the input dtype exactly as torch rounds x + residual;
    # the interpreter truncates float32 -> bfloat16 casts instead, one ulp (2**-7) away.
    exact = DEVICE == "cuda" or dtype == torch.float32
    torch.testing.assert_close(summed, want_sum, atol=0, rtol=0 if exact else 2**-7)
    torch.testing.assert_close(normed, want_normed, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [576, 1100])
def test_silu_and_mul_triton(dtype: torch.dtype, inter: int) -> None:
    # 1100 > the kernel's 1024-column block: a row spans two programs.
    x = 3 * _randn(2, 2 * inter, dtype=dtype)
    got = triton_activation.silu_and_mul(x)
    assert got.shape == (2, inter) and got.dtype == dtype
    torch.testing.assert_close(got, reference.silu_and_mul(x), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nq,nkv,d", [(3, 1, 64), (8, 1, 128), (9, 3, 64)])
def test_apply_rotary_triton(dtype: torch.dtype, nq: int, nkv: int, d: int) -> None:
    cache = kernels.build_rotary_cache(d, 64, 10000.0, None, device=DEVICE)
    positions = torch.tensor([0, 5, 63, 17], device=DEVICE)
    qkv, q, k, _ = _fused_qkv(4, nq, nkv, d, dtype)
    qkv_ref = qkv.clone()
    q_ref, k_ref, _ = _split_qkv(qkv_ref, nq, nkv, d)
    reference.apply_rotary(q_ref, k_ref, positions, cache)
    triton_rotary.apply_rotary(q, k, positions, cache)
    torch.testing.assert_close(q, q_ref, **TOLERANCE[dtype])
    torch.testing.assert_close(k, k_ref, **TOLERANCE[dtype])
    # The V columns of the fused buffer are not touched.
    assert torch.equal(qkv[:, (nq + nkv) * d :], qkv_ref[:, (nq + nkv) * d :])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nkv,d", [(3, 64), (1, 128)])
def test_store_kv_triton(dtype: torch.dtype, nkv: int, d: int) -> None:
    _, _, key, value = _fused_qkv(5, 3, nkv, d, dtype)
    slots = torch.tensor([17, -1, 0, 31, 5], device=DEVICE)
    k_cache, v_cache = _randn(3, 16, nkv, d, dtype=dtype), _randn(3, 16, nkv, d, dtype=dtype)
    k_want, v_want = k_cache.clone(), v_cache.clone()
    reference.store_kv(key, value, k_want, v_want, slots)
    triton_cache.store_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_want) and torch.equal(v_cache, v_want)


def _paged_cache(lens: list[int], nkv: int, d: int, dtype: torch.dtype, block_size: int = 16):
    """Random per-sequence K/V scattered over shuffled blocks of a paged cache.

    Returns the cache, block tables whose padding entries are block 0, and the contiguous
    per-sequence K/V it was built from.
    """
    blocks_per_seq = [(n + block_size - 1) // block_size for n in lens]
    total = sum(blocks_per_seq) + 1
    k_cache = _randn(total, block_size, nkv, d, dtype=dtype)
    v_cache = _randn(total, block_size, nkv, d, dtype=dtype)
    order = torch.randperm(total, device=DEVICE)
    tables = torch.zeros(len(lens), max(blocks_per_seq), dtype=torch.int32, device=DEVICE)
    contiguous = []
    next_block = 0
    for seq, (n, count) in enumerate(zip(lens, blocks_per_seq)):
        ids = order[next_block : next_block + count]
        next_block += count
        tables[seq, :count] = ids.to(torch.int32)
        keys = k_cache[ids].reshape(-1, nkv, d)[:n]
        values = v_cache[ids].reshape(-1, nkv, d)[:n]
        contiguous.append((keys, values))
    return k_cache, v_cache, tables, contiguous


ATTENTION_CASES = [
    # batch, nq, nkv, d, context lengths: GQA ratios 1, 3, 8; head sizes 64, 128;
    # contexts ending mid-block, on a block boundary, and of a single token.
    pytest.param(1, 3, 3, 64, [1], id="b1-gqa1-single-token"),
    pytest.param(2, 9, 3, 64, [37, 16], id="b2-gqa3-midblock"),
    pytest.param(1, 8, 1, 128, [50], id="b1-gqa8-d128"),
    pytest.param(33, 3, 1, 64, None, id="b33-gqa3"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,nq,nkv,d,lens", ATTENTION_CASES)
def test_paged_decode_attention_triton(
    dtype: torch.dtype, batch: int, nq: int, nkv: int, d: int, lens: list[int] | None
) -> None:
    lens = lens or [1 + (7 * i) % 40 for i in range(batch)]
    k_cache, v_cache, tables, _ = _paged_cache(lens, nkv, d, dtype)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = _randn(batch, nq, d, dtype=dtype)
    want = reference.paged_decode_attention(q, k_cache, v_cache, tables, context_lens, d**-0.5)
    got = triton_attention.paged_decode_attention(q, k_cache, v_cache, tables, context_lens, d**-0.5)
    assert got.shape == (batch, nq, d) and got.dtype == dtype
    torch.testing.assert_close(got, want, **ATTENTION_TOLERANCE[dtype])


@pytest.mark.parametrize("num_splits", [2, 3])
def test_paged_decode_attention_triton_split_context(num_splits: int) -> None:
    # With 3 splits of 32 tokens over a 96-token table, the 1-token sequence leaves two
    # splits empty: the merge must weight them by zero.
    lens = [90, 1, 33]
    k_cache, v_cache, tables, _ = _paged_cache(lens, 2, 64, torch.float32)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = _randn(3, 4, 64)
    want = reference.paged_decode_attention(q, k_cache, v_cache, tables, context_lens, 0.125)
    got = triton_attention.paged_decode_attention(
        q, k_cache, v_cache, tables, context_lens, 0.125, num_splits=num_splits
    )
    torch.testing.assert_close(got, want, **ATTENTION_TOLERANCE[torch.float32])


@pytest.mark.parametrize("num_splits", [1, 3])
def test_paged_decode_attention_padding_rows_are_zero(num_splits: int) -> None:
    # A CUDA graph's batch is padded with rows of context length 0 (and an all-zero table):
    # they must read nothing and come out finite, whether or not the context is split.
    lens = [70, 5]
    k_cache, v_cache, tables, _ = _paged_cache(lens, 2, 64, torch.float32)
    padded_tables = torch.cat((tables, torch.zeros_like(tables[:2])))
    context_lens = torch.tensor(lens + [0, 0], dtype=torch.int32, device=DEVICE)
    q = _randn(4, 4, 64)
    got = triton_attention.paged_decode_attention(
        q, k_cache, v_cache, padded_tables, context_lens, 0.125, num_splits=num_splits
    )
    want = reference.paged_decode_attention(q[:2], k_cache, v_cache, tables, context_lens[:2], 0.125)
    torch.testing.assert_close(got[:2], want, **ATTENTION_TOLERANCE[torch.float32])
    assert torch.equal(got[2:], torch.zeros_like(got[2:]))


def test_paged_decode_attention_triton_reads_an_fp8_cache() -> None:
    # --kv-cache-dtype fp8: both read e4m3 K/V and widen it; the reference is checked against
    # the same cache widened by hand.
    lens = [37, 16]
    k_cache, v_cache, tables, _ = _paged_cache(lens, 3, 64, torch.float32)
    k8, v8 = k_cache.to(torch.float8_e4m3fn), v_cache.to(torch.float8_e4m3fn)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = _randn(2, 9, 64)
    want = reference.paged_decode_attention(q, k8.float(), v8.float(), tables, context_lens, 0.125)
    torch.testing.assert_close(reference.paged_decode_attention(q, k8, v8, tables, context_lens, 0.125), want)
    got = triton_attention.paged_decode_attention(q, k8, v8, tables, context_lens, 0.125)
    torch.testing.assert_close(got, want, **ATTENTION_TOLERANCE[torch.float32])


# ---------------------------------------------------------------- reference vs plain math


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_reference_matches_transformers(dtype: torch.dtype) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(576, eps=1e-5).to(device=DEVICE, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(576))
    x = _randn(4, 576, dtype=dtype)
    with torch.no_grad():
        want = norm(x)
    assert torch.equal(reference.rms_norm(x, norm.weight.detach(), 1e-5), want)


def test_add_rms_norm_reference() -> None:
    x, residual, weight = _randn(2, 64), _randn(2, 64), _randn(64)
    normed, summed = reference.add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(summed, x + residual)
    s = x + residual
    torch.testing.assert_close(normed, weight * s / torch.sqrt((s * s).mean(-1, keepdim=True) + 1e-6))


def test_silu_and_mul_reference() -> None:
    x = _randn(3, 10)
    gate, up = x[:, :5], x[:, 5:]
    torch.testing.assert_close(reference.silu_and_mul(x), gate / (1 + torch.exp(-gate)) * up)


def _hf_rotary(head_dim: int, rope_parameters: dict, positions: torch.Tensor):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=head_dim * 2,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=4096,
        rope_parameters=rope_parameters,
    )
    rotary = LlamaRotaryEmbedding(config)
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions[None])
    return cos[0], sin[0]


ROPE_CASES = [
    pytest.param(None, {"rope_type": "default", "rope_theta": 10000.0}, id="default"),
    pytest.param(
        {"type": "linear", "factor": 4.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        id="linear-legacy-key",
    ),
    pytest.param(
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        id="llama3",
    ),
]


@pytest.mark.parametrize("scaling,hf_parameters", ROPE_CASES)
def test_rotary_cache_matches_transformers(scaling: dict | None, hf_parameters: dict) -> None:
    head_dim, theta = 128, hf_parameters["rope_theta"]
    positions = torch.tensor([0, 1, 7, 1000, 4095])
    cache = reference.build_rotary_cache(head_dim, 4096, theta, scaling)
    assert cache.shape == (4096, head_dim) and cache.dtype == torch.float32
    cos, sin = _hf_rotary(head_dim, hf_parameters, positions)
    torch.testing.assert_close(cache[positions, : head_dim // 2], cos[:, : head_dim // 2], atol=0, rtol=0)
    torch.testing.assert_close(cache[positions, head_dim // 2 :], sin[:, : head_dim // 2], atol=0, rtol=0)


def test_rotary_cache_scaling_changes_frequencies() -> None:
    plain = reference.build_rotary_cache(128, 64, 500000.0, None)
    llama3 = reference.build_rotary_cache(128, 64, 500000.0, ROPE_CASES[2].values[0])
    linear = reference.build_rotary_cache(128, 64, 10000.0, {"rope_type": "linear", "factor": 2.0})
    # llama3 keeps the fastest frequency and slows the slowest by `factor` (here 8); the
    # slowest angle is tiny, so its sine (last column) is proportional to the frequency.
    assert torch.equal(llama3[:, 0], plain[:, 0])
    torch.testing.assert_close(8 * llama3[1:, 127], plain[1:, 127], rtol=1e-4, atol=0)
    # linear scaling: position p behaves as p / factor.
    torch.testing.assert_close(linear[10], reference.build_rotary_cache(128, 64, 10000.0, None)[5])
    with pytest.raises(ValueError, match="yarn"):
        reference.build_rotary_cache(128, 64, 10000.0, {"rope_type": "yarn", "factor": 2.0})


def test_apply_rotary_reference_matches_transformers() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    _, q, k, _ = _fused_qkv(5, 6, 2, 64, torch.float32)
    positions = torch.tensor([3, 0, 100, 7, 7], device=DEVICE)
    cache = reference.build_rotary_cache(64, 128, 10000.0, None, device=DEVICE)
    cos = cache[positions, :32].repeat(1, 2)[None]
    sin = cache[positions, 32:].repeat(1, 2)[None]
    # transformers' layout is [batch, heads, tokens, d].
    want_q, want_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    reference.apply_rotary(q, k, positions, cache)
    torch.testing.assert_close(q, want_q[0].transpose(0, 1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k, want_k[0].transpose(0, 1), atol=1e-6, rtol=1e-6)


def test_store_kv_reference_writes_slots() -> None:
    key, value = _randn(4, 2, 8), _randn(4, 2, 8)
    k_cache, v_cache = torch.zeros(2, 4, 2, 8, device=DEVICE), torch.zeros(2, 4, 2, 8, device=DEVICE)
    reference.store_kv(key, value, k_cache, v_cache, torch.tensor([6, -1, 0, 3], device=DEVICE))
    assert torch.equal(k_cache[1, 2], key[0]) and torch.equal(v_cache[1, 2], value[0])
    assert torch.equal(k_cache[0, 0], key[2]) and torch.equal(k_cache[0, 3], key[3])
    # Only the three kept tokens were written; the skipped one left no trace.
    assert int((k_cache.abs().sum(-1) > 0).sum()) == 3 * 2


@pytest.mark.parametrize("nq,nkv", [(4, 4), (9, 3), (8, 1)])
def test_paged_decode_attention_reference_matches_naive(nq: int, nkv: int) -> None:
    lens = [1, 16, 23, 40]
    k_cache, v_cache, tables, contiguous = _paged_cache(lens, nkv, 64, torch.float32)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = _randn(len(lens), nq, 64)
    got = reference.paged_decode_attention(q, k_cache, v_cache, tables, context_lens, 0.125)
    for seq, (keys, values) in enumerate(contiguous):
        for head in range(nq):
            kv_head = head // (nq // nkv)
            scores = (keys[:, kv_head].double() @ q[seq, head].double()) * 0.125
            want = torch.softmax(scores, 0) @ values[:, kv_head].double()
            torch.testing.assert_close(got[seq, head].double(), want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- dispatch


def test_dispatch_picks_reference_on_cpu_and_triton_when_forced(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(reference, "silu_and_mul", lambda x: calls.append("reference"))
    monkeypatch.setattr(triton_activation, "silu_and_mul", lambda x: calls.append("triton"))
    x = torch.zeros(1, 4)
    monkeypatch.delenv("MGPUD_KERNELS", raising=False)
    kernels.silu_and_mul(x)
    monkeypatch.setenv("MGPUD_KERNELS", "triton")
    kernels.silu_and_mul(x)
    assert calls == ["reference", "triton"]


def test_dispatched_kernels_run_end_to_end(monkeypatch) -> None:
    monkeypatch.setenv("MGPUD_KERNELS", "triton")
    x, weight = _randn(2, 64), _randn(64)
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6))


def test_package_imports_without_loading_triton() -> None:
    code = (
        "import sys, mgpud.engine.core.kernels as k; "
        "loaded = [m for m in sys.modules if m == 'triton' or m.startswith('mgpud.engine.core.kernels.triton')]; "
        "assert not loaded, loaded; "
        "import torch; k.rms_norm(torch.ones(1, 8), torch.ones(8), 1e-6); "
        "assert 'triton' not in sys.modules"
    )
    env = {key: value for key, value in os.environ.items() if key != "MGPUD_KERNELS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _compile_for_sm90() -> None:
    """Compile every kernel for sm_90 (run in a process where TRITON_INTERPRET is off)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def compile_kernel(kernel, pointers: dict[str, str], constants: dict, **options) -> None:
        signature = {
            name: "constexpr" if name in constants else pointers.get(name, "i32")
            for name in kernel.arg_names
        }
        signature.update({name: "fp32" for name in ("eps", "scale") if name in signature})
        source = ASTSource(kernel, signature, constexprs=constants)
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)

    bf16 = "*bf16"
    compile_kernel(
        triton_norm._rms_norm_kernel,
        {"x_ptr": bf16, "residual_ptr": bf16, "weight_ptr": bf16, "out_ptr": bf16},
        {"HAS_RESIDUAL": True, "BLOCK": 1024},
    )
    compile_kernel(triton_activation._silu_and_mul_kernel, {"x_ptr": bf16, "out_ptr": bf16}, {"BLOCK": 1024})
    compile_kernel(
        triton_rotary._rotary_kernel,
        {"x_ptr": bf16, "positions_ptr": "*i64", "cache_ptr": "*fp32"},
        {"HALF": 64, "BLOCK_H": 32, "BLOCK_D": 64},
    )
    compile_kernel(
        triton_cache._store_kv_kernel,
        {"key_ptr": bf16, "value_ptr": bf16, "k_cache_ptr": bf16, "v_cache_ptr": bf16,
         "slot_mapping_ptr": "*i64"},
        {"BLOCK_SIZE": 16, "BLOCK_H": 8, "BLOCK_D": 128},
    )
    compile_kernel(
        triton_attention._paged_decode_kernel,
        {"q_ptr": bf16, "k_cache_ptr": bf16, "v_cache_ptr": bf16, "block_tables_ptr": "*i32",
         "context_lens_ptr": "*i32", "out_ptr": "*fp32", "lse_ptr": "*fp32"},
        {"GROUP": 8, "GROUP_PAD": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "TILE": 32, "WRITE_LSE": True},
        num_warps=8,
    )
    compile_kernel(
        triton_attention._merge_splits_kernel,
        {"partial_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": bf16},
        {"SPLITS_PAD": 8, "HEAD_DIM": 128},
    )


def test_kernels_compile_for_hopper_without_a_gpu() -> None:
    # The interpreter skips code generation; compiling for sm_90 catches what it cannot
    # (tl.dot's dtype and shape rules, layouts, ptxas failures). That needs the kernels
    # decorated with the interpreter off, hence a fresh process.
    pytest.importorskip("triton.backends.nvidia")
    code = f"import runpy; runpy.run_path({__file__!r})['_compile_for_sm90']()"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
