"""The CPU paged-attention kernel (built here from C) against the torch reference: decode and
prefill chunks over a shuffled paged cache, float32 and bfloat16 caches, GQA, threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mgpud.engine.core import kernels
from mgpud.engine.core.kernels import cbuild, cpu_attention, reference
from mgpud.engine.hosts.cpu_features import cpu_flags

if not {"avx2", "fma"} <= cpu_flags() or cbuild.compiler() is None:
    pytest.skip("the kernel needs AVX2, FMA and a C compiler", allow_module_level=True)

BLOCK = 16
F32 = {"atol": 2e-5, "rtol": 2e-5}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _cache(lens: list[int], nkv: int, d: int, dtype: torch.dtype = torch.float32):
    """Caches with each sequence's blocks scattered at random, and its block table row."""
    per_seq = [-(-n // BLOCK) for n in lens]
    order = torch.randperm(sum(per_seq) + 3)  # spare blocks that nobody reads
    k = torch.randn(len(order), BLOCK, nkv, d).to(dtype)
    v = torch.randn(len(order), BLOCK, nkv, d).to(dtype)
    tables = torch.zeros(len(lens), max(per_seq), dtype=torch.int32)
    start = 0
    for row, count in enumerate(per_seq):
        tables[row, :count] = order[start:start + count].int()
        start += count
    return k, v, tables


@pytest.mark.parametrize("nq, nkv, d", [(4, 4, 64), (9, 3, 64), (8, 1, 128), (4, 2, 80)])
def test_decode_matches_reference(nq: int, nkv: int, d: int) -> None:
    lens = [1, 16, 23, 40, 129]
    k, v, tables = _cache(lens, nkv, d)
    qkv = torch.randn(len(lens), (nq + 2 * nkv) * d)
    q = qkv[:, :nq * d].view(len(lens), nq, d)  # read in place: rows wider than q's heads
    context = torch.tensor(lens, dtype=torch.int32)
    got = cpu_attention.paged_attention(q, k, v, tables, context, 1, d ** -0.5)
    want = reference.paged_decode_attention(q, k, v, tables, context, d ** -0.5)
    torch.testing.assert_close(got, want, **F32)


def test_bfloat16_cache_is_read_exactly() -> None:
    lens = [7, 33, 64]
    k, v, tables = _cache(lens, 2, 64, torch.bfloat16)
    q = torch.randn(3, 4, 64).bfloat16()
    context = torch.tensor(lens, dtype=torch.int32)
    got = cpu_attention.paged_attention(q, k, v, tables, context, 1, 0.125)
    # The kernel computes in float32 from the bf16 values: so does this reference.
    want = reference.paged_decode_attention(q.float(), k.float(), v.float(), tables, context, 0.125)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.bfloat16().float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("n, context_len", [(1, 1), (5, 37), (16, 16), (20, 64)])
def test_prefill_chunk_over_cached_prefix_matches_reference(n: int, context_len: int) -> None:
    k, v, tables = _cache([context_len], 3, 64)
    q = torch.randn(n, 9, 64)
    got = kernels.paged_prefill_attention(q, k, v, tables[0], context_len, 0.125)
    want = reference.paged_prefill_attention(q, k, v, tables[0], context_len, 0.125)
    torch.testing.assert_close(got, want, **F32)


def test_threads_split_the_work_without_changing_it() -> None:
    lens = [300] * 24 + [5] * 8  # enough work for several threads, split unevenly
    k, v, tables = _cache(lens, 3, 64)
    q = torch.randn(len(lens), 9, 64)
    context = torch.tensor(lens)  # int64, as some callers pass: converted, not misread
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_attention.paged_attention(q, k, v, tables, context, 1, 0.125)
        torch.set_num_threads(4)
        four = cpu_attention.paged_attention(q, k, v, tables, context, 1, 0.125)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, four)
    want = reference.paged_decode_attention(q, k, v, tables, context, 0.125)
    torch.testing.assert_close(one, want, **F32)


def test_dispatch_falls_back_to_torch_where_the_kernel_does_not_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    k, v, tables = _cache([20], 2, 64, torch.float16)  # no float16 kernel
    q = torch.randn(1, 2, 64).half()
    assert cpu_attention.paged_attention(q, k, v, tables, torch.tensor([20], dtype=torch.int32), 1, 0.125) is None
    got = kernels.paged_decode_attention(q, k, v, tables, torch.tensor([20], dtype=torch.int32), 0.125)
    assert got.dtype == torch.float16 and got.shape == (1, 2, 64)


def test_builds_into_an_empty_cache_and_can_be_turned_off(tmp_path: Path) -> None:
    code = "from mgpud.engine.core.kernels import cpu_attention as c; print(c.available())"
    env = dict(os.environ, MGPUD_KERNEL_CACHE=str(tmp_path))
    env.pop("MGPUD_CPU_KERNELS", None)
    built = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert built.stdout.strip() == "True" and len(list(tmp_path.glob("cpu_attention-*.so"))) == 1
    env["MGPUD_CPU_KERNELS"] = "torch"
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "False"
