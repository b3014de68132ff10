"""The CPU int8 matmul kernel (built here from C) against its dequantized weights, and the
int8 layer on it and on torch's path (MGPUD_CPU_KERNELS=torch)."""

from __future__ import annotations

import pytest
import torch
from mgpud.engine.core.kernels import cbuild, cpu_int8
from mgpud.engine.core.layers.quant import Int8
from mgpud.engine.hosts.cpu_features import cpu_flags

if not {"avx2", "fma"} <= cpu_flags() or cbuild.compiler() is None:
    pytest.skip("the kernel needs AVX2, FMA and a C compiler", allow_module_level=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _quantized(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.rand(n) * 0.02 + 1e-3


def _dequantized(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.float() @ (weight.float() * scale[:, None]).T


# M: one decode token, two (the kernel's register path), a batch (its widened-buffer path);
# K: past its 512-column chunks, and not a multiple of 8; N: not a multiple of its 4-row tiles.
@pytest.mark.parametrize("m, n, k", [(1, 960, 576), (2, 7, 13), (1, 5, 1049), (64, 577, 1536), (3, 3, 8),
                                     (64, 192, 100)])
def test_kernel_matches_dequantized_weights(m: int, n: int, k: int) -> None:
    weight, scale = _quantized(n, k)
    x = torch.randn(m, k)
    got = cpu_int8.linear(x, weight, scale)
    torch.testing.assert_close(got, _dequantized(x, weight, scale), atol=1e-4, rtol=1e-4)


def test_no_tokens_give_an_empty_output() -> None:
    weight, scale = _quantized(8, 16)
    assert cpu_int8.linear(torch.empty(0, 16), weight, scale).shape == (0, 8)


def test_threads_strided_rows_and_bf16_activations() -> None:
    weight, scale = _quantized(522, 512)  # enough multiply-adds for threads (the kernel's threshold: 4M each)
    wide = torch.randn(2, 32, 600)
    x = wide[..., 50:562]  # a view: rows 600 floats apart, as a slice of a fused output
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_int8.linear(x, weight, scale)
        torch.set_num_threads(3)
        three = cpu_int8.linear(x, weight, scale)
    finally:
        torch.set_num_threads(before)
    assert one.shape == (2, 32, 522) and torch.equal(one, three)  # each output is one thread's sum
    torch.testing.assert_close(one, _dequantized(x, weight, scale), atol=1e-4, rtol=1e-4)
    bf16 = cpu_int8.linear(x.bfloat16(), weight, scale)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), _dequantized(x.bfloat16(), weight, scale), atol=2e-2, rtol=1e-2)


def _int8_layer(weight: torch.Tensor) -> tuple[Int8, torch.nn.Module]:
    method, layer = Int8(), torch.nn.Module()
    method.create(layer, *weight.shape, torch.float32, None)
    method.store(layer, 0, weight, lambda: weight.abs().amax(dim=1))
    return method, layer


def test_int8_layer_runs_the_kernel_and_torch_path_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    weight, x = torch.randn(96, 80) * 0.05, torch.randn(5, 80)
    method, layer = _int8_layer(weight)
    assert layer.weight_scale.dtype == torch.float32  # the kernel's scales, chosen at create
    kernel = method.apply(layer, x, None)
    monkeypatch.setenv("MGPUD_CPU_KERNELS", "torch")
    cpu_int8._library.cache_clear()
    try:
        method, fallback_layer = _int8_layer(weight)
        assert fallback_layer.weight_scale.dtype == torch.bfloat16  # torch's int8 matmul takes them so
        fallback = method.apply(fallback_layer, x, None)
    finally:
        monkeypatch.delenv("MGPUD_CPU_KERNELS")
        cpu_int8._library.cache_clear()
    assert kernel.dtype == fallback.dtype == torch.float32
    # Both are within int8 rounding of the float32 layer; they differ by bf16 scales and activations.
    want = x @ weight.T
    assert (kernel - want).norm() / want.norm() < 0.01
    torch.testing.assert_close(fallback, kernel, atol=3e-2, rtol=3e-2)
