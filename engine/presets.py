"""What the planner knows without weights or GPUs: model configs, hardware figures, CPU probe.

Model presets are the public config.json values (only the keys ModelConfig reads).
Hardware figures are the vendors' dense (no sparsity) per-GPU numbers; link bandwidth is
per direction, the rate a ring all-reduce moves data at.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from .config import ModelConfig
from .demo import DEMO_NAME
from .devices import Device, DeviceSpecError, cpu_device_memory, discover, host_cores

MiB = 1 << 20
GiB = 1 << 30

_LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "Llama-3.1-8B": {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE, "tie_word_embeddings": False,
        "attention_bias": False, "torch_dtype": "bfloat16"},
    "Llama-3.1-70B": {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
        "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE, "tie_word_embeddings": False,
        "attention_bias": False, "torch_dtype": "bfloat16"},
    "Qwen2.5-72B": {  # Qwen/Qwen2.5-72B-Instruct
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 8192, "intermediate_size": 29568,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
        "vocab_size": 152064, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "Mistral-7B": {  # mistralai/Mistral-7B-v0.3
        "architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 32768, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "Mixtral-8x7B": {  # mistralai/Mixtral-8x7B-v0.1
        "architectures": ["MixtralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "num_local_experts": 8, "num_experts_per_tok": 2},
    "SmolLM2-135M": {  # HuggingFaceTB/SmolLM2-135M(-Instruct), the demo model
        "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
        "rope_theta": 100000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
}

_MODEL_ALIASES = {"mistral-7b-v0.3": "Mistral-7B", "mixtral-8x7b-v0.1": "Mixtral-8x7B",
                  DEMO_NAME: "SmolLM2-135M"}


def model_preset(name: str) -> ModelConfig | None:
    """The preset `name` designates: "Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3", "demo" (instruct variants share the architecture)."""
    key = name.rsplit("/", 1)[-1].lower().replace("-instruct", "")
    key = _MODEL_ALIASES.get(key, key)
    for preset, raw in MODEL_PRESETS.items():
        if preset.lower() == key.lower():
            return ModelConfig.from_dict(raw)
    return None


@dataclass(frozen=True)
class Hardware:
    name: str
    memory: int  # bytes per device
    flops16: float  # FLOP/s, dense bf16/fp16 matmul
    flops32: float  # FLOP/s, dense fp32 matmul
    memory_bandwidth: float  # bytes/s
    link: str  # what connects the devices
    link_bandwidth: float  # bytes/s per direction, per device
    link_latency: float  # seconds one small all-reduce takes


_NVLINK_LATENCY = 10e-6  # s: NCCL all-reduce of a decode-sized message inside an NVLink domain
_PCIE_LATENCY = 25e-6  # s: the same through the PCIe root complex

HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    Hardware("H100-80GB", 81559 * MiB, 989e12, 67e12, 3.35e12, "NVLink 4 (SXM5)", 450e9, _NVLINK_LATENCY),
    Hardware("H100-PCIe", 81559 * MiB, 756e12, 51e12, 2.0e12, "PCIe Gen5 x16", 64e9, _PCIE_LATENCY),
    Hardware("A100-80GB", 81920 * MiB, 312e12, 19.5e12, 2.039e12, "NVLink 3 (SXM4)", 300e9, _NVLINK_LATENCY),
    Hardware("A100-40GB", 40960 * MiB, 312e12, 19.5e12, 1.555e12, "NVLink 3 (SXM4)", 300e9, _NVLINK_LATENCY),
)}

# Substrings of NVML device names -> preset; a GPU not listed gets no throughput estimate.
_NVML_NAMES = (("H100 80GB HBM3", "H100-80GB"), ("H100 PCIe", "H100-PCIe"),
               ("A100-SXM4-80GB", "A100-80GB"), ("A100-SXM4-40GB", "A100-40GB"))


def hardware_for_gpu(nvml_name: str) -> Hardware | None:
    return next((HARDWARE[p] for part, p in _NVML_NAMES if part in nvml_name), None)


# Memory a worker holds before any weights; the planner leaves it out of the budget.
RUNTIME_MEMORY = {"cuda": 1 * GiB,  # CUDA context, cuBLAS workspace, NCCL buffers
                  "cpu": 272 * MiB}  # Python, torch, gloo, zmq: 256-268 MiB measured in loaded workers


@dataclass(frozen=True)
class DevicePool:
    """The devices a plan may use, all alike."""

    label: str  # "8x H100-80GB", "cpu:4", "2x NVIDIA H100 80GB HBM3"
    kind: str  # "cuda" | "cpu"
    count: int
    memory: int  # bytes per device (the smallest when they differ)
    hardware: Hardware | None  # None: figures unknown, no throughput estimate
    in_use: int = 0  # bytes other processes hold now on the busiest device
    notes: tuple[str, ...] = ()


_DESCRIPTION = re.compile(r"^(?:(\d+)\s*x\s*)?([a-z0-9.-]+)$", re.IGNORECASE)


def describe(spec: str, device_memory: int | None = None) -> DevicePool | None:
    """The pool "8xH100-80GB", "A100-40GB" or "cpu:4" describes; None if `spec` is no description.

    device_memory: bytes per CPU device (default: the share devices.cpu_devices gives).
    """
    text = spec.strip()
    if text.lower().startswith("cpu:") and text[4:].isdigit() and int(text[4:]) > 0:
        return cpu_pool(int(text[4:]), device_memory)
    match = _DESCRIPTION.match(text)
    if match is None:
        return None
    count, model = int(match.group(1) or 1), match.group(2).lower()
    hardware = next((h for name, h in HARDWARE.items() if name.lower() == model), None)
    if hardware is None or count < 1:
        return None
    return DevicePool(f"{count}x {hardware.name}", "cuda", count, hardware.memory, hardware)


def cpu_pool(count: int, device_memory: int | None = None) -> DevicePool:
    memory = device_memory or cpu_device_memory(count)
    return DevicePool(f"cpu:{count}", "cpu", count, memory, cpu_hardware(count, memory))


def resolve_devices(spec: str | None, device_memory: int | None = None) -> DevicePool:
    """The pool a description names ("8xH100-80GB", "cpu:4"), else the devices discovered."""
    described = describe(spec, device_memory) if spec else None
    if described:
        return described
    try:
        found = discover(spec, device_memory)
    except DeviceSpecError:
        raise DeviceSpecError(f"devices {spec!r}: neither discoverable (auto, cpu:N, 0,1) nor a "
                              f"description such as 8xH100-80GB (known: {', '.join(HARDWARE)})") from None
    return pool_from_devices(found)


def pool_from_devices(found: list[Device]) -> DevicePool:
    usable = [d for d in found if d.available and d.memory_total]
    notes = [f"{d.id} left out: {d.error or 'its memory size is unavailable'}"
             for d in found if not (d.available and d.memory_total)]
    if not usable:
        raise DeviceSpecError("no usable device: " + "; ".join(notes or ["none found"]))
    first, count = usable[0], len(usable)
    memory = min(d.memory_total for d in usable)
    in_use = max(d.memory_used or 0 for d in usable)
    if len({d.name for d in usable}) > 1:
        notes.append("the devices differ; planning with the smallest memory and the first one's figures")
    if first.kind == "cpu":
        return DevicePool(f"cpu:{count}", "cpu", count, memory, cpu_hardware(count, memory), in_use,
                          tuple(notes))
    hardware = hardware_for_gpu(first.name)
    if hardware is None:
        notes.append(f"no figures for {first.name}: throughput not estimated")
    return DevicePool(f"{count}x {first.name}", "cuda", count, memory, hardware, in_use, tuple(notes))


CPU_ALLREDUCE_LATENCY = 0.5e-3  # s: gloo, 2 processes, decode-sized tensor (measured here: 0.3-0.7 ms)
CPU_LINK_BANDWIDTH = 2e9  # bytes/s: order of gloo over loopback; decode all-reduces are latency-bound


def cpu_hardware(count: int, memory: int) -> Hardware:
    """Figures for one of `count` CPU devices sharing this host's cores and memory bus."""
    figures = cpu_figures()
    cores = host_cores()
    share = min(max(1, cores // count), cores / count) / figures.threads
    return Hardware(f"CPU device ({figures.threads} threads measured)", memory,
                    figures.flops16 * share, figures.flops32 * share,
                    figures.copy_bandwidth * share, "gloo (loopback)",
                    CPU_LINK_BANDWIDTH, CPU_ALLREDUCE_LATENCY)


@dataclass(frozen=True)
class CpuFigures:
    threads: int  # torch threads used for the measurement
    flops32: float  # FLOP/s, fp32 matmul
    flops16: float  # FLOP/s, bf16 matmul
    copy_bandwidth: float  # bytes/s read plus written by a large tensor copy


@functools.cache
def cpu_figures() -> CpuFigures:
    """This host measured once per process (~0.6 s)."""
    import torch  # only CPU planning pays for torch

    n = 1024
    a32 = torch.randn(n, n)
    a16 = a32.bfloat16()
    src = torch.empty(16 * MiB)  # 64 MiB of fp32: far beyond the caches
    dst = torch.empty_like(src)
    return CpuFigures(threads=torch.get_num_threads(),
                      flops32=_rate(lambda: torch.mm(a32, a32), 2 * n ** 3, 0.3),
                      flops16=_rate(lambda: torch.mm(a16, a16), 2 * n ** 3, 0.15),
                      copy_bandwidth=_rate(lambda: dst.copy_(src), 2 * src.nbytes, 0.1))


def _rate(work: Callable[[], object], amount: float, seconds: float) -> float:
    """`amount` per call of `work`, per second, over about `seconds`."""
    work()  # warm-up: the first call allocates and picks kernels
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        work()
        calls += 1
    return calls * amount / elapsed
