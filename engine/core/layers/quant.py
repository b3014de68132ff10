"""How a linear layer keeps its weight and runs its matmul: one small class per method.

A method allocates the layer's weight (and scales), stores a block of checkpoint rows as
the layer's `weight_loader` reads it, and runs y = x W^T. Quantizing methods turn each
block into 8-bit rows with one scale per output channel as it arrives, so no rank ever
holds a full-precision copy of more than the slice it is reading. Scales are computed
over a whole checkpoint row (`amax`), so every TP degree quantizes alike.

Weight-only quantization: activations stay in the model dtype between layers and the
8-bit weights are widened inside the matmul, which keeps outputs close to the unquantized
model. The LM head is quantized alike, per vocabulary row (`vocab_method`); an embedding
keeps its rows as its method does and widens the rows it looks up (`embed`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...exceptions import ModelLoadError
from ...hosts.cpu_features import native_bf16
from ..kernels import cpu_int8
from ..kernels.reference import FP8, FP8_MAX

INT8_MAX = 127

RowAmax = Callable[[], torch.Tensor]  # [rows] float32: |max| over each whole checkpoint row


def parameter(shape: tuple[int, ...], dtype: torch.dtype, loader: Any, from_weight: bool = False) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    p.weight_loader = loader
    # Filled when the layer's weight loads (scales computed at load), not read from the checkpoint.
    p.from_weight = from_weight
    return p


def copy_rows(dest: torch.Tensor, source: Any, start: int, end: int) -> None:
    """dest <- rows start..end of source: a checkpoint tensor reads them into dest's own
    memory; a plain tensor (a loader that transformed its source) is sliced and copied."""
    if hasattr(source, "read_rows_into"):
        source.read_rows_into(dest, start, end)
    else:
        dest.copy_(source[start:end])


class Unquantized:
    """The checkpoint's weight in the model dtype."""

    def store_rows(self, layer: nn.Module, offset: int, source: Any, start: int, end: int) -> None:
        """Checkpoint rows start..end into weight rows from `offset`, read straight into place."""
        copy_rows(layer.weight.data[offset:offset + end - start], source, start, end)

    def create(self, layer: nn.Module, rows: int, cols: int, dtype: torch.dtype, loader: Any) -> None:
        layer.weight = parameter((rows, cols), dtype, loader)

    def store(self, layer: nn.Module, offset: int, block: torch.Tensor, amax: RowAmax) -> None:
        layer.weight.data[offset:offset + len(block)].copy_(block)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)

    def embed(self, layer: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the weight: an embedding lookup."""
        return F.embedding(ids, layer.weight)


class _PerChannel:
    """8-bit weight rows with one scale per output channel, quantized at load."""

    storage: torch.dtype
    top: float  # the largest 8-bit magnitude a row's |max| maps to

    def create(self, layer: nn.Module, rows: int, cols: int, dtype: torch.dtype, loader: Any) -> None:
        layer.weight = parameter((rows, cols), self.storage, loader)
        scale_dtype = self.scale_dtype(layer.weight.device, dtype)
        layer.weight_scale = parameter((rows,), scale_dtype, loader, from_weight=True)

    def store_rows(self, layer: nn.Module, offset: int, source: Any, start: int, end: int) -> None:
        block = source[start:end]  # whole rows: their maxima are at hand
        self.store(layer, offset, block, lambda: block.float().abs().amax(dim=1))

    def store(self, layer: nn.Module, offset: int, block: torch.Tensor, amax: RowAmax) -> None:
        # Rounded to the stored dtype first, so that the rows are quantized by the scale kept.
        scale_dtype = layer.weight_scale.dtype
        scale = (amax() / self.top).clamp(min=torch.finfo(torch.float32).tiny).to(scale_dtype).float()
        layer.weight.data[offset:offset + len(block)].copy_(self._quantize(block.float() / scale[:, None]))
        layer.weight_scale.data[offset:offset + len(block)].copy_(scale)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = self._matmul(layer, x)
        return y if bias is None else y + bias

    def embed(self, layer: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` widened to the layer's dtype with their scales: only the rows looked up
        are ever held wide."""
        return layer.weight[ids].to(layer.dtype) * layer.weight_scale[ids].to(layer.dtype).unsqueeze(-1)

    def scale_dtype(self, device: torch.device, dtype: torch.dtype) -> torch.dtype:
        """The scales' dtype for weights on `device` multiplying `dtype` activations: the
        matmul the layer will run takes them so, and they are never cast per call."""
        return torch.float32

    def _quantize(self, scaled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _matmul(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Int8(_PerChannel):
    """int8, symmetric per channel. CPU: mgpud's C kernel (cpu_int8.c) with float32 scales
    where it builds, unless the activations are bf16 and the CPU multiplies bf16 natively;
    else torch's weight-only int8 matmul, which wants bf16 activations and scales (with
    float32 activations it ran ~10x slower than a float32 F.linear here)."""

    storage = torch.int8
    top = INT8_MAX

    def scale_dtype(self, device: torch.device, dtype: torch.dtype) -> torch.dtype:
        if device.type == "cpu" and cpu_int8.available() and (dtype == torch.float32 or not native_bf16()):
            return torch.float32  # the C kernel's
        return torch.bfloat16

    def _quantize(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled.round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)

    def _matmul(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return F.linear(x, layer.weight.to(x.dtype)) * layer.weight_scale.to(x.dtype)
        if layer.weight_scale.dtype == torch.float32:  # the C kernel was chosen at create
            return cpu_int8.linear(x, layer.weight, layer.weight_scale)
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, layer.weight, layer.weight_scale)
        return out.to(x.dtype).view(*lead, -1)


class Fp8(_PerChannel):
    """float8 e4m3, per channel. CUDA sm_89+: torch._scaled_mm with activations quantized
    per token; elsewhere the weight is widened per matmul (correct, not fast)."""

    storage = FP8
    top = FP8_MAX

    def _quantize(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8)

    def _matmul(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if _scaled_mm_serves(x, layer.weight):
            return _fp8_scaled_mm(x, layer.weight, layer.weight_scale)
        return F.linear(x, layer.weight.to(x.dtype)) * layer.weight_scale.to(x.dtype)


class Fp8Checkpoint(Fp8):
    """A checkpoint quantized already (compressed-tensors, fbgemm_fp8): float8 `weight` and
    its `weight_scale` (one per tensor or per output channel) are read as they are."""

    def create(self, layer: nn.Module, rows: int, cols: int, dtype: torch.dtype, loader: Any) -> None:
        layer.weight = parameter((rows, cols), FP8, loader)
        layer.weight_scale = parameter((rows,), torch.float32, loader)

    def store(self, layer: nn.Module, offset: int, block: torch.Tensor, amax: RowAmax) -> None:
        if block.dtype != FP8:
            raise ModelLoadError(f"a {block.dtype} weight in an fp8 checkpoint: mgpud reads checkpoints whose "
                                 "linear layers (all but the LM head) are float8_e4m3fn")
        layer.weight.data[offset:offset + len(block)].copy_(block)

    @staticmethod
    def store_scale(layer: nn.Module, offset: int, rows: int, scale: torch.Tensor) -> None:
        """`scale`: this part's rows' scales, or its one per-tensor scale."""
        scale = scale.float().reshape(-1)
        layer.weight_scale.data[offset:offset + rows].copy_(scale if scale.numel() == rows else scale.expand(rows))


def _scaled_mm_serves(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not x.is_cuda or torch.cuda.get_device_capability(x.device) < (8, 9):
        return False
    return weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0


def _fp8_scaled_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    x_scale = (flat.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    x8 = (flat.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    # Row-wise scales (one per token, one per channel) need a bfloat16 output.
    out = torch._scaled_mm(x8, weight.t(), scale_a=x_scale, scale_b=scale.view(1, -1),
                           out_dtype=torch.bfloat16)
    return out.to(x.dtype).view(*lead, -1)


LinearMethod = Unquantized | Int8 | Fp8


def vocab_method(method: LinearMethod) -> LinearMethod:
    """The LM head's method (and a tied embedding's, the same rows) under a model whose
    linear layers run `method`. Quantizing at load covers the head too, one scale per
    vocabulary row: it is the largest single matmul of a decode step and 21% of SmolLM2's
    weights, and per-row int8 moved the demo model's perplexity by under 0.01% in a
    transformers simulation. A checkpoint quantized already keeps its head as it stores
    it, unquantized (compressed-tensors and fbgemm_fp8 leave lm_head out)."""
    return Unquantized() if isinstance(method, Fp8Checkpoint) else method


def linear_method(quantization: str | None, prequantized: bool) -> LinearMethod:
    """The method for a model's linear layers: `quantization` asked at load (None, int8,
    fp8); `prequantized`: the checkpoint holds fp8 weights and scales already."""
    if prequantized:
        return Fp8Checkpoint()
    return {None: Unquantized, "int8": Int8, "fp8": Fp8}[quantization]()
