"""Refusing a (tp, dp) shape before anything is stopped, with the shapes that would work."""

from __future__ import annotations

from mgpud.units import fmt_bytes

from ..config import EngineConfig, ModelConfig
from ..exceptions import ModelLoadError
from ..hosts.hardware import RUNTIME_MEMORY
from ..hosts.inventory import cpu_device_memory
from .planner import activation_peak_bytes, kv_bytes_per_token, normalize_dtype, weight_bytes


def _problem(model: ModelConfig, cfg: EngineConfig, tp: int, dp: int, devices: int,
             max_model_len: int) -> str | None:
    if tp < 1 or dp < 1:
        return "tp and dp must both be at least 1"
    if problem := model.tp_problem(tp):
        return problem
    if cfg.enable_expert_parallel and not model.num_experts:
        return ("expert parallelism needs a mixture-of-experts model and this one is dense: load it without "
                "--enable-expert-parallel")
    if cfg.enable_expert_parallel and tp > model.num_experts:
        return (f"expert parallelism over tp={tp} ranks needs at least {tp} experts and the model has "
                f"{model.num_experts}")
    if tp * dp > devices:
        return f"tp={tp} x dp={dp} needs {tp * dp} devices but {devices} are available to this model"
    dtype = normalize_dtype(cfg.dtype_name(on_cuda=False))
    need = max_model_len * kv_bytes_per_token(model, dtype, tp, cfg.kv_cache_dtype)
    if cfg.kv_cache_memory is not None:
        room = cfg.kv_cache_memory
    else:
        # CPU devices: a share of RAM unless configured; CUDA budgets are measured at load.
        capacity = cfg.device_memory or cpu_device_memory(devices)
        room = (int(capacity * cfg.memory_utilization) - RUNTIME_MEMORY["cpu"]
                - weight_bytes(model, dtype, tp, model.weight_quantization(cfg.quantization),
                               cfg.enable_expert_parallel)
                - activation_peak_bytes(model, dtype, tp, cfg.max_num_batched_tokens, cfg.max_num_seqs))
    if room < need:
        return (f"at tp={tp} one max_model_len={max_model_len} sequence needs {fmt_bytes(need)} of KV "
                f"cache per device but about {fmt_bytes(max(room, 0))} is left (lower max_model_len, "
                "raise tp, or give the KV cache more memory)")
    return None


def valid_shapes(model: ModelConfig, cfg: EngineConfig, devices: int, max_model_len: int) -> list[tuple[int, int]]:
    return [(tp, dp) for tp in model.valid_tp_degrees(devices) for dp in range(1, devices // tp + 1)
            if _problem(model, cfg, tp, dp, devices, max_model_len) is None]


def check_shape(model: ModelConfig, cfg: EngineConfig, tp: int, dp: int, devices: int, max_model_len: int) -> None:
    problem = _problem(model, cfg, tp, dp, devices, max_model_len)
    if problem:
        shapes = ", ".join(f"tp={t} dp={d}" for t, d in valid_shapes(model, cfg, devices, max_model_len))
        raise ModelLoadError(f"{problem}; shapes that would work: {shapes or 'none on these devices'}")
