"""Triton kernels against their torch references at serving shapes, timed with CUDA events.

    python benchmarks/kernels.py [--quick] [--json] [--dtype bfloat16|float16|float32]

Each kernel's effective bandwidth (the bytes it cannot avoid moving over its time) is set
against the device's memory bandwidth peak: from NVML (2 x the top memory clock x the bus
width), else the planner's hardware preset. Needs a CUDA device; without one it says so and
exits 0.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterator

import torch
from common import benchmark

SKIPPED = "no CUDA device"

# (nq, nkv, head_dim): Llama-3-8B-like and SmolLM2-135M.
ATTENTION_MODELS = [(32, 8, 128), (9, 3, 64)]
# (hidden, intermediate) for the same two models.
MLP_MODELS = [(4096, 14336), (576, 1536)]
BLOCK_SIZE = 16


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _time_us(fn: Callable[[], object], iters: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean time of `iters` back-to-back calls, in microseconds."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000 / iters)
    return statistics.median(samples)


def _cases(
    quick: bool, dtype: torch.dtype, device: str = "cuda"
) -> Iterator[tuple[str, dict, Callable, Callable, int]]:
    """Yield (kernel, shape, torch fn, triton fn, bytes the kernel must move at least)."""
    from mgpud.engine.core.kernels import (reference, triton_activation, triton_attention, triton_cache,
                                         triton_norm, triton_rotary)

    size = torch.tensor([], dtype=dtype).element_size()
    batches = [1, 64] if quick else [1, 16, 64, 256]
    contexts = [128, 1024] if quick else [128, 1024, 8192]
    models = ATTENTION_MODELS[:1] if quick else ATTENTION_MODELS

    for hidden, inter in MLP_MODELS[:1] if quick else MLP_MODELS:
        weight = torch.ones(hidden, device=device, dtype=dtype)
        for tokens in batches:
            x = torch.randn(tokens, hidden, device=device, dtype=dtype)
            residual = torch.randn_like(x)
            shape = {"tokens": tokens, "hidden": hidden}
            yield (
                "rms_norm",
                shape,
                lambda x=x, w=weight: reference.rms_norm(x, w, 1e-6),
                lambda x=x, w=weight: triton_norm.rms_norm(x, w, 1e-6),
                2 * x.numel() * size,
            )
            yield (
                "add_rms_norm",
                shape,
                lambda x=x, r=residual, w=weight: reference.add_rms_norm(x, r, w, 1e-6),
                lambda x=x, r=residual, w=weight: triton_norm.add_rms_norm(x, r, w, 1e-6),
                4 * x.numel() * size,
            )
            gate_up = torch.randn(tokens, 2 * inter, device=device, dtype=dtype)
            yield (
                "silu_and_mul",
                {"tokens": tokens, "intermediate": inter},
                lambda x=gate_up: reference.silu_and_mul(x),
                lambda x=gate_up: triton_activation.silu_and_mul(x),
                3 * tokens * inter * size,
            )

    for nq, nkv, head_dim in models:
        cache = reference.build_rotary_cache(head_dim, 8192, 10000.0, None, device=device)
        for tokens in batches:
            qkv = torch.randn(tokens, (nq + 2 * nkv) * head_dim, device=device, dtype=dtype)
            q = qkv[:, : nq * head_dim].view(tokens, nq, head_dim)
            k = qkv[:, nq * head_dim : (nq + nkv) * head_dim].view(tokens, nkv, head_dim)
            v = qkv[:, (nq + nkv) * head_dim :].view(tokens, nkv, head_dim)
            positions = torch.randint(0, 8192, (tokens,), device=device)
            shape = {"tokens": tokens, "nq": nq, "nkv": nkv, "head_dim": head_dim}
            yield (
                "apply_rotary",
                shape,
                lambda q=q, k=k, p=positions: reference.apply_rotary(q, k, p, cache),
                lambda q=q, k=k, p=positions: triton_rotary.apply_rotary(q, k, p, cache),
                2 * (nq + nkv) * tokens * head_dim * size,
            )
            blocks = _cdiv(tokens, BLOCK_SIZE) * 4
            k_cache = torch.zeros(blocks, BLOCK_SIZE, nkv, head_dim, device=device, dtype=dtype)
            v_cache = torch.zeros_like(k_cache)
            slots = torch.randperm(blocks * BLOCK_SIZE, device=device)[:tokens]
            yield (
                "store_kv",
                shape,
                lambda k=k, v=v, kc=k_cache, vc=v_cache, s=slots: reference.store_kv(k, v, kc, vc, s),
                lambda k=k, v=v, kc=k_cache, vc=v_cache, s=slots: triton_cache.store_kv(k, v, kc, vc, s),
                4 * nkv * tokens * head_dim * size,
            )

        for batch in batches:
            for context in contexts:
                per_seq = _cdiv(context, BLOCK_SIZE)
                blocks = batch * per_seq + 1
                k_cache = torch.randn(blocks, BLOCK_SIZE, nkv, head_dim, device=device, dtype=dtype)
                v_cache = torch.randn_like(k_cache)
                order = torch.randperm(blocks, device=device)[: batch * per_seq]
                tables = order.view(batch, per_seq).to(torch.int32)
                lens = torch.full((batch,), context, device=device, dtype=torch.int32)
                q = torch.randn(batch, nq, head_dim, device=device, dtype=dtype)
                scale = head_dim**-0.5
                args = (q, k_cache, v_cache, tables, lens, scale)
                yield (
                    "paged_decode_attention",
                    {"batch": batch, "context": context, "nq": nq, "nkv": nkv, "head_dim": head_dim},
                    lambda a=args: reference.paged_decode_attention(*a),
                    lambda a=args: triton_attention.paged_decode_attention(*a),
                    2 * batch * context * nkv * head_dim * size,
                )


def hbm_peak() -> tuple[float | None, str]:
    """The current device's memory bandwidth peak (bytes/s), and where the figure came from."""
    from mgpud.engine.hosts import nvml
    from mgpud.engine.hosts.hardware import hardware_for_gpu
    from mgpud.engine.hosts.inventory import discover

    device = discover(str(torch.cuda.current_device()))[0]
    mod, _ = nvml.module()
    if mod is not None and device.nvml_index is not None:
        handle, _ = nvml.read(mod, "handle", "nvmlDeviceGetHandleByIndex", device.nvml_index)
        clock, _ = nvml.read(mod, "memory clock", "nvmlDeviceGetMaxClockInfo", handle, mod.NVML_CLOCK_MEM)
        width, _ = nvml.read(mod, "bus width", "nvmlDeviceGetMemoryBusWidth", handle)
        if clock and width:  # MHz, bits; double data rate
            return 2 * clock * 1e6 * width / 8, "nvml"
    preset = hardware_for_gpu(device.name)
    return (preset.memory_bandwidth, "preset") if preset else (None, "unknown")


def run(quick: bool, dtype: torch.dtype) -> dict:
    iters = 10 if quick else 50
    peak, source = hbm_peak()
    results = []
    for kernel, shape, torch_fn, triton_fn, min_bytes in _cases(quick, dtype):
        torch_us = _time_us(torch_fn, iters)
        triton_us = _time_us(triton_fn, iters)
        results.append(
            {
                "kernel": kernel,
                "shape": shape,
                "torch_us": round(torch_us, 2),
                "triton_us": round(triton_us, 2),
                "speedup": round(torch_us / triton_us, 2),
                # Effective bandwidth over the bytes the kernel cannot avoid moving.
                "triton_gb_s": round(min_bytes / triton_us / 1e3, 1),
                "hbm_fraction": round(min_bytes / triton_us / 1e-6 / peak, 3) if peak else None,
            }
        )
        torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name(),
        "dtype": str(dtype).removeprefix("torch."),
        "quick": quick,
        "hbm_peak_gb_s": round(peak / 1e9, 1) if peak else None,
        "hbm_peak_source": source,
        "results": results,
    }


def _print_table(report: dict) -> None:
    if "skipped" in report:
        print(f"{report['skipped']}: kernel benchmarks skipped")
        return
    print(f"{report['device']}  dtype={report['dtype']}  HBM peak {report['hbm_peak_gb_s']} GB/s "
          f"({report['hbm_peak_source']})  (times in microseconds)")
    header = f"{'kernel':<24}{'shape':<52}{'torch':>10}{'triton':>10}{'speedup':>9}{'GB/s':>9}{'of peak':>9}"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        shape = " ".join(f"{key}={value}" for key, value in row["shape"].items())
        print(
            f"{row['kernel']:<24}{shape:<52}{row['torch_us']:>10.1f}{row['triton_us']:>10.1f}"
            f"{row['speedup']:>8.2f}x{row['triton_gb_s']:>9.1f}{_share(row['hbm_fraction']):>9}"
        )


def _share(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


# Printed only: no results/kernels.json.
@benchmark("kernels", __doc__, quick_help="a small run", show=_print_table, save=False,
           add_args=lambda ap: ap.add_argument("--dtype", default="bfloat16",
                                               choices=["bfloat16", "float16", "float32"]))
def main(args: argparse.Namespace) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": SKIPPED}
    return run(args.quick, getattr(torch, args.dtype))


if __name__ == "__main__":
    main()
