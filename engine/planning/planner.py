"""Which (tp, dp) shapes a model fits in, and which one to use.

Memory per device ~ weights / tp + KV cache (the seeds' rule), checked against the share
of each device the model may use. Decode throughput is a roofline estimate: the slower of
compute and memory traffic, plus two all-reduces per layer that nothing overlaps.
Mixture-of-experts models hold every expert and compute with the active ones; with expert
parallelism each rank holds whole experts and a MoE layer's all-reduce becomes an
all-to-all dispatch and combine of each token's hidden state to its top-k experts, as on
GPUs (the CPU engine combines with an all-reduce: engine/core/layers/moe.py).
Activations are left out: the engine profiles them at load time and takes them from the
KV room, so the KV figures here are what profiling starts from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mgpud.units import fmt_bytes

from ..config import SUPPORTED_ARCHITECTURES, ModelConfig, cpu_kv_blocks_cap
from ..exceptions import EngineError
from ..hosts.cpu_features import default_dtype
from ..hosts.hardware import RUNTIME_MEMORY, Hardware, Link
from ..jsonfile import read_json
from .presets import MODEL_PRESETS, model_preset
from .targets import DeviceSet, device_set

DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}  # bytes per weight
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16",
                  "half": "fp16", "float8": "fp8"}
MIN_GAIN = 0.10  # a larger tp must add this much decode throughput to count as an improvement
# Architectures whose parameter and KV layouts the formulas below know: what the engine
# serves, and two it plans for without serving (MLA attention; gpt-oss's experts).
MODELLED_ARCHITECTURES = SUPPORTED_ARCHITECTURES + ("DeepseekV3ForCausalLM", "GptOssForCausalLM")


class PlanError(EngineError):
    """The plan cannot be made as asked: unknown model or dtype, or a knob out of range."""


def normalize_dtype(name: str) -> str:
    dtype = _DTYPE_ALIASES.get(name.lower(), name.lower())
    if dtype not in DTYPES:
        raise PlanError(f"dtype {name!r} unknown; use one of {', '.join(DTYPES)}")
    return dtype


def activation_bytes(dtype: str) -> int:  # bytes per value
    # 8-bit checkpoints quantize the linear layers only: KV, embeddings and norms stay 16-bit.
    return 4 if dtype == "fp32" else 2


def kv_dtype(dtype: str, kv_cache_dtype: str = "auto") -> str:
    if kv_cache_dtype == "fp8":
        return "fp8"
    return dtype if DTYPES[dtype] >= 2 else "bf16"


# ---------------------------------------------------------------- formulas

@dataclass(frozen=True)
class ParamGroups:
    linear: int  # attention and MLP/expert matrices: sharded tp ways, quantizable
    sharded: int  # embeddings, LM head, biases: sharded tp ways, in the model dtype (the LM head: see weight_bytes)
    replicated: int  # norms and MoE routers: whole on every rank


def param_groups(cfg: ModelConfig) -> ParamGroups:
    linear = cfg.num_layers * cfg.attention_params() + cfg.mlp_params()
    replicated = cfg.replicated_params()
    return ParamGroups(linear, cfg.param_count() - linear - replicated, replicated)


def routed_expert_params(cfg: ModelConfig) -> int:
    return cfg.moe_layers() * cfg.expert_params() * cfg.num_experts


def weight_bytes(cfg: ModelConfig, dtype: str, tp: int, quantization: str | None = None,
                 expert_parallel: bool = False) -> int:  # bytes per device
    """dtype: the model's; quantization: the linear layers' when 8-bit, and the LM head's
    when quantized at load (their per-row scales, under 1% of them, are left out; routed
    experts stay in the dtype)."""
    g, wide, narrow = param_groups(cfg), activation_bytes(dtype), DTYPES[dtype]
    linear = DTYPES[quantization or dtype]
    # Quantizing at load covers the LM head (and a tied embedding: the same rows), per vocabulary
    # row; an fp8 checkpoint keeps it unquantized (layers/quant.py vocab_method).
    head = cfg.vocab_size * cfg.hidden_size if quantization and cfg.quantization is None else 0
    sharded = head * linear + (g.sharded - head) * wide
    experts = routed_expert_params(cfg)
    if expert_parallel:  # the fullest rank holds ceil(E / tp) whole experts
        held = cfg.moe_layers() * cfg.expert_params() * _ceil_div(cfg.num_experts, tp) * narrow
    else:
        held = _ceil_div(experts * narrow, tp)
    return _ceil_div((g.linear - experts) * linear, tp) + held + _ceil_div(sharded, tp) + g.replicated * wide


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def kv_bytes_per_token(cfg: ModelConfig, dtype: str, tp: int, kv_cache_dtype: str = "auto") -> int:  # bytes per device
    return cfg.kv_bytes_per_token(DTYPES[kv_dtype(dtype, kv_cache_dtype)], tp)


def allreduce_bytes_per_token(cfg: ModelConfig, dtype: str, tp: int, expert_parallel: bool = False) -> int:
    """Bytes each device sends: two all-reduces of a hidden-size vector per layer (a ring
    sends 2(tp-1)/tp of each), less the MoE layers' under expert parallelism."""
    message = cfg.hidden_size * activation_bytes(dtype)
    return _allreduces(cfg, expert_parallel) * 2 * (tp - 1) * message // tp


def all_to_all_bytes_per_token(cfg: ModelConfig, dtype: str, tp: int, expert_parallel: bool) -> int:
    """Bytes each device sends under expert parallelism: per MoE layer, the token's hidden
    state out to its top-k experts and their outputs back, (tp-1)/tp of them on other ranks."""
    if not expert_parallel:
        return 0
    message = cfg.hidden_size * activation_bytes(dtype)
    return cfg.moe_layers() * 2 * cfg.experts_per_token * (tp - 1) * message // tp


def _allreduces(cfg: ModelConfig, expert_parallel: bool) -> int:  # per token, all layers
    return 2 * cfg.num_layers - (cfg.moe_layers() if expert_parallel else 0)


@dataclass(frozen=True)
class StepTime:
    compute: float  # seconds
    memory: float  # seconds
    comm: float  # seconds

    @property
    def total(self) -> float:  # seconds
        return max(self.compute, self.memory) + self.comm

    @property
    def bound(self) -> str:
        if self.comm > max(self.compute, self.memory):
            return "interconnect"
        return "compute" if self.compute > self.memory else "memory"


def decode_step(cfg: ModelConfig, hw: Hardware, dtype: str, tp: int, batch: int,
                context: int, expert_parallel: bool = False, quantization: str | None = None,
                kv_cache_dtype: str = "auto") -> StepTime:
    """One decode step of `batch` sequences holding `context` tokens each, on a tp-way replica."""
    h, layers = cfg.hidden_size, cfg.num_layers
    q = cfg.num_heads * cfg.head_dim
    matrices = layers * cfg.attention_params() + cfg.mlp_params(active=True) + cfg.vocab_size * h
    flop = 2 * matrices + 4 * context * q * layers  # per token
    # 8-bit weights are dequantized into 16-bit matmuls (weight-only), so they run at 16-bit rates.
    compute = batch * flop / tp / (hw.flops32 if dtype == "fp32" else hw.flops16)
    weights = weight_bytes(cfg, dtype, tp, quantization, expert_parallel) - _unread_expert_bytes(cfg, dtype, tp, batch)
    kv = kv_bytes_per_token(cfg, dtype, tp, kv_cache_dtype)
    memory = (weights + batch * context * kv) / hw.memory_bandwidth
    return StepTime(compute, memory, communication_s(cfg, hw.interconnect, dtype, tp, batch, expert_parallel))


def communication_s(cfg: ModelConfig, link: Link, dtype: str, tp: int, batch: int,
                    expert_parallel: bool = False) -> float:
    """Seconds one decode step of `batch` sequences on a tp-way replica spends in its
    all-reduces over `link` (and, under expert parallelism, the MoE dispatch and combine)."""
    if tp == 1:
        return 0.0
    message = batch * cfg.hidden_size * activation_bytes(dtype)
    ring = 2 * (tp - 1) / tp * message
    comm = _allreduces(cfg, expert_parallel) * (link.latency + ring / link.bandwidth)
    if expert_parallel:  # dispatch and combine per MoE layer
        spread = cfg.experts_per_token * (tp - 1) / tp * message
        comm += cfg.moe_layers() * 2 * (link.latency + spread / link.bandwidth)
    return comm


def _unread_expert_bytes(cfg: ModelConfig, dtype: str, tp: int, batch: int) -> float:  # bytes
    if not cfg.num_experts:
        return 0.0
    idle = (1 - cfg.experts_per_token / cfg.num_experts) ** batch  # chance no sequence picks an expert
    return routed_expert_params(cfg) * DTYPES[dtype] / tp * idle


def knee_tp(cfg: ModelConfig, hw: Hardware, dtype: str, tps: list[int], batch: int,
            context: int, expert_parallel: bool = False, quantization: str | None = None,
            kv_cache_dtype: str = "auto") -> int:
    """The tp past which the next valid tp adds less than MIN_GAIN decode throughput per replica."""
    rates = [batch / decode_step(cfg, hw, dtype, tp, batch, context, expert_parallel, quantization,
                                 kv_cache_dtype).total for tp in tps]
    return next((tps[i] for i in range(len(tps) - 1) if rates[i + 1] < rates[i] * (1 + MIN_GAIN)),
                tps[-1])


# ---------------------------------------------------------------- plan

@dataclass(frozen=True)
class Shape:
    tp: int
    dp: int
    fits: bool  # the weights and at least one max_model_len sequence fit on every device
    why: str
    weights_per_device: int  # bytes
    kv_per_device: int  # bytes left for the KV cache on each device
    kv_bytes_per_token: int  # bytes one token takes on each device
    kv_tokens: int  # tokens one replica holds (whole blocks)
    sequences: int  # max_model_len sequences one replica holds
    allreduce_bytes_per_token: int  # bytes each device sends per generated token
    allreduce_bytes_per_step: int  # the same for one decode step of `batch` sequences
    allreduce_s_per_step: float | None  # seconds that step spends communicating; None without link figures
    all_to_all_bytes_per_token: int  # expert parallel: MoE dispatch and combine bytes each device sends
    batch: int  # sequences per replica in the estimate: min(concurrency, sequences)
    tokens_per_s: float | None  # decode estimate, all replicas; None without hardware figures
    bound: str | None  # what limits a decode step: "compute", "memory" or "interconnect"


@dataclass
class Plan:
    model: str
    architecture: str
    params: int
    active_params: int  # those one token computes with: MoE models run top-k experts of all
    devices: str
    device_count: int
    device_memory: int  # bytes per device
    budget: int  # bytes per device for weights and KV: memory x utilization - runtime
    dtype: str
    kv_dtype: str
    max_model_len: int  # tokens
    concurrency: int  # sequences per replica the choice must hold at max_model_len
    memory_utilization: float
    block_size: int  # tokens per KV block
    shapes: list[Shape]
    impossible: dict[int, str]  # tp -> why no shape can use it
    knee_tp: int | None  # diminishing-returns point; None without hardware figures
    chosen: tuple[int, int] | None  # (tp, dp)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    expert_parallel: bool = False  # MoE experts placed whole on ranks
    quantization: str | None = None  # the linear layers', when 8-bit: fp8 or int8

    @property
    def chosen_shape(self) -> Shape | None:
        return next((s for s in self.shapes if (s.tp, s.dp) == self.chosen), None)

    @property
    def ok(self) -> bool:
        shape = self.chosen_shape
        return shape is not None and shape.fits

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["impossible"] = {str(tp): why for tp, why in self.impossible.items()}
        return data


@dataclass(frozen=True)
class _Ask:
    cfg: ModelConfig
    hw: Hardware | None
    dtype: str
    budget: int  # bytes per device
    length: int  # tokens
    concurrency: int
    block_size: int
    batched_tokens: int  # the engine's max_num_batched_tokens: the profiled step
    max_seqs: int  # the engine's max_num_seqs: rows of logits in that step
    kv_cache_memory: int | None  # bytes per device when set explicitly (no profiling then)
    expert_parallel: bool  # MoE: whole experts per rank (all-to-all traffic) instead of slices
    quantization: str | None = None  # the linear layers' when 8-bit
    kv_cache_dtype: str = "auto"
    model: str = ""  # as the user named it, for the advice's command line
    link: Link | None = None  # what connects the devices: the hardware's, or what --link names
    cpu: bool = False  # CPU devices: KV reserved only up to what the batch limits fill


def plan(model: ModelConfig | str | Path, devices: DeviceSet | str | None = None, *,
         dtype: str | None = None, max_model_len: int | None = None, concurrency: int = 16,
         memory_utilization: float = 0.9, tp: int = 0, dp: int = 0, block_size: int = 16,
         device_memory: int | None = None, max_num_seqs: int = 256,
         max_num_batched_tokens: int = 2048, kv_cache_memory: int | None = None,
         enable_expert_parallel: bool = False, quantization: str | None = None,
         kv_cache_dtype: str = "auto", link: str | None = None) -> Plan:
    """Every (tp, dp) shape for `model` on `devices`, and the one to use.

    model: a ModelConfig, a model directory, a config.json, or a preset name.
    devices: a DeviceSet, a description ("8xH100-80GB", "cpu:4"), or a --devices value
    to discover ("auto", "0,1"); None = auto. dtype: weights (fp32, bf16, fp16, fp8, int8);
    None = the engine's default (bf16 on GPUs and on CPUs with bf16 instructions, else fp32).
    tp, dp: 0 = automatic.
    device_memory: bytes per CPU device (default: a share of RAM).
    kv_cache_memory: KV bytes per device, as a load with that setting would allocate.
    enable_expert_parallel: MoE experts placed whole, expert e of E on rank e * tp // E.
    quantization: int8 or fp8 linear layers, as `mgpud load --quantization` (an fp8 checkpoint
    is fp8 without it); kv_cache_dtype: auto or fp8, as `mgpud load --kv-cache-dtype`.
    link: "pcie" or "nvlink", what connects devices described by their memory alone ("4x48GB").
    """
    _check_knobs(max_model_len, concurrency, memory_utilization, tp, dp, block_size)
    _check_precision(quantization, kv_cache_dtype)
    cfg, label = load_model(model)
    if enable_expert_parallel and not cfg.num_experts:
        raise PlanError(f"{label}: expert parallelism needs a mixture-of-experts model; {cfg.architecture} "
                        "is dense: plan it without --enable-expert-parallel")
    if cfg.architecture not in MODELLED_ARCHITECTURES:
        raise PlanError(f"{label}: the planner cannot model architecture {cfg.architecture} (its parameter and "
                        f"KV-cache layout are unknown to it) and gives no figures rather than wrong ones; "
                        f"it models {', '.join(MODELLED_ARCHITECTURES)}")
    quantization = quantization or (cfg.quantization if cfg.quantization in DTYPES else None)
    pool = devices if isinstance(devices, DeviceSet) else device_set(devices, device_memory, link)
    wdtype = normalize_dtype(dtype or default_dtype(pool.kind == "cuda"))  # the engine's default
    ask = _Ask(cfg, pool.hardware, wdtype, device_budget(pool, memory_utilization),
               max_model_len or cfg.max_position_embeddings, concurrency, block_size,
               max_num_batched_tokens, max_num_seqs, kv_cache_memory, enable_expert_parallel, quantization,
               kv_cache_dtype, str(model), pool.hardware.interconnect if pool.hardware else pool.link,
               pool.kind == "cpu")
    valid = cfg.valid_tp_degrees(pool.count)
    shapes = [_shape(ask, t, d) for t in valid for d in range(1, pool.count // t + 1)]
    knee = (knee_tp(cfg, ask.hw, wdtype, valid, concurrency, ask.length // 2, enable_expert_parallel,
                    quantization, kv_cache_dtype) if ask.hw else None)
    chosen, reasons = (_explicit(ask, shapes, pool.count, tp, dp) if tp
                       else _auto(ask, shapes, pool, dp))
    if chosen and knee and (text := _knee_reason(chosen[0], knee, valid)):
        reasons.append(text)
    return Plan(label, cfg.architecture, cfg.param_count(), cfg.param_count(active=True), pool.label, pool.count,
                pool.memory,
                ask.budget, wdtype, kv_dtype(wdtype, kv_cache_dtype), ask.length, concurrency, memory_utilization,
                block_size, shapes, _impossible(cfg, pool.count), knee, chosen, reasons,
                list(pool.notes) + _notes(ask), enable_expert_parallel, quantization)


def _check_knobs(max_model_len: int | None, concurrency: int, utilization: float, tp: int,
                 dp: int, block_size: int) -> None:
    problems = []
    if max_model_len is not None and max_model_len < 1:
        problems.append(f"max_model_len must be >= 1 (got {max_model_len})")
    if concurrency < 1:
        problems.append(f"concurrency must be >= 1 (got {concurrency})")
    if not 0 < utilization <= 1:
        problems.append(f"memory utilization must be in (0, 1] (got {utilization})")
    if tp < 0 or dp < 0:
        problems.append(f"tp and dp must be >= 0, 0 = automatic (got tp={tp}, dp={dp})")
    if block_size < 1 or block_size & (block_size - 1):
        problems.append(f"block size must be a power of two (got {block_size})")
    if problems:
        raise PlanError("; ".join(problems))


def _check_precision(quantization: str | None, kv_cache_dtype: str) -> None:
    if quantization not in (None, "int8", "fp8"):
        raise PlanError(f"quantization {quantization!r} unknown; use int8 or fp8")
    if kv_cache_dtype not in ("auto", "fp8"):
        raise PlanError(f"kv_cache_dtype {kv_cache_dtype!r} unknown; use auto or fp8")


def load_model(model: ModelConfig | str | Path) -> tuple[ModelConfig, str]:
    """The config and a display name for a ModelConfig, directory, config.json or preset name."""
    if isinstance(model, ModelConfig):
        return model, model.architecture
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelConfig.from_dir(path), path.resolve().name
    if path.is_file():
        return ModelConfig.from_dict(read_json(path)), path.resolve().parent.name
    preset = model_preset(str(model))
    if preset is None:
        raise PlanError(f"{model}: no such model directory or config.json, and no preset of that "
                        f"name; presets: {', '.join(MODEL_PRESETS)}")
    return preset, str(model)


def device_budget(pool: DeviceSet, utilization: float) -> int:  # bytes for weights and KV per device
    # Counted as the engine counts at load time: the utilization share of the whole device,
    # less what other processes already hold on it and the runtime's own share.
    return int(pool.memory * utilization) - pool.in_use - RUNTIME_MEMORY[pool.kind]


# Measured peaks run ~2x the tensors a step keeps alive at once (allocator slack, attention
# scratch); estimating high keeps the plan on the safe side of what the engine will find.
_ACTIVATION_SLACK = 2


def activation_peak_bytes(cfg: ModelConfig, dtype: str, tp: int, batched_tokens: int, max_seqs: int) -> int:
    """Peak activation bytes of rank 0 in the engine's profile step (its largest step):
    per-token intermediates of one layer, plus the logits gathered on rank 0."""
    act = activation_bytes(dtype)
    width = 6 * cfg.hidden_size + (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim // tp \
        + 3 * cfg.intermediate_size // tp
    rows = min(max_seqs, batched_tokens)
    gathered = 1 / tp + (2 if tp > 1 else 0)  # the local slice, then every rank's parts and their concatenation
    return int(batched_tokens * width * act * _ACTIVATION_SLACK + rows * cfg.vocab_size * 4 * gathered)


def _shape(ask: _Ask, tp: int, dp: int) -> Shape:
    weights = weight_bytes(ask.cfg, ask.dtype, tp, ask.quantization, ask.expert_parallel)
    per_token = kv_bytes_per_token(ask.cfg, ask.dtype, tp, ask.kv_cache_dtype)
    if ask.kv_cache_memory is not None:
        room = ask.kv_cache_memory
    else:
        room = max(0, ask.budget - weights - activation_peak_bytes(
            ask.cfg, ask.dtype, tp, ask.batched_tokens, ask.max_seqs))
        if ask.cpu:
            room = min(room, cpu_kv_blocks_cap(ask.max_seqs, ask.length, ask.block_size) * ask.block_size * per_token)
    tokens = room // (per_token * ask.block_size) * ask.block_size
    sequences = tokens // (_ceil_div(ask.length, ask.block_size) * ask.block_size)
    batch = min(ask.concurrency, sequences)
    step = (decode_step(ask.cfg, ask.hw, ask.dtype, tp, batch, ask.length // 2, ask.expert_parallel,
                        ask.quantization, ask.kv_cache_dtype) if ask.hw and batch else None)
    rate = dp * batch / step.total if step else (0.0 if ask.hw else None)
    per_token_ar = allreduce_bytes_per_token(ask.cfg, ask.dtype, tp, ask.expert_parallel)
    comm = communication_s(ask.cfg, ask.link, ask.dtype, tp, batch, ask.expert_parallel) if ask.link and batch else None
    # An explicit KV size is allocated as given: the engine then checks no memory budget.
    weights_fit = ask.kv_cache_memory is not None or weights <= ask.budget
    why = _why(ask, weights, tokens, sequences)
    short = ask.expert_parallel and tp > ask.cfg.num_experts
    if short:
        why = f"expert parallelism over {tp} ranks needs at least {tp} experts; the model has {ask.cfg.num_experts}"
    return Shape(tp, dp, weights_fit and sequences >= 1 and not short, why,
                 weights, room, per_token, tokens, sequences, per_token_ar, per_token_ar * batch, comm,
                 all_to_all_bytes_per_token(ask.cfg, ask.dtype, tp, ask.expert_parallel), batch,
                 rate, step.bound if step else None)


def _why(ask: _Ask, weights: int, tokens: int, sequences: int) -> str:
    if weights > ask.budget and ask.kv_cache_memory is None:
        return f"weights {fmt_bytes(weights)} exceed the {fmt_bytes(ask.budget)} budget per device"
    if sequences < 1:
        return f"KV room holds {tokens} tokens, less than one {ask.length}-token sequence"
    if sequences < ask.concurrency:
        return f"holds {sequences} of the {ask.concurrency} sequences wanted at {ask.length} tokens"
    return f"holds {sequences} sequences of {ask.length} tokens"


def _explicit(ask: _Ask, shapes: list[Shape], count: int, tp: int,
              dp: int) -> tuple[tuple[int, int] | None, list[str]]:
    if ask.cfg.num_heads % tp or ask.cfg.num_kv_heads % tp:
        return None, [f"tp={tp} is impossible: {_indivisible(ask.cfg, tp)}; valid TP degrees: "
                      f"{', '.join(map(str, ask.cfg.valid_tp_degrees()))}"]
    dp = dp or count // tp
    if tp * max(dp, 1) > count:
        return None, [f"tp={tp} x dp={max(dp, 1)} needs {tp * max(dp, 1)} devices; {count} available"]
    shape = next(s for s in shapes if (s.tp, s.dp) == (tp, dp))
    idle = count - tp * dp
    reasons = [f"tp={tp}, dp={dp} as asked" + (f"; {_count(idle, 'device')} left idle" if idle else "")]
    if not shape.fits:
        reasons.append(f"it does not fit: {shape.why}")
    return (tp, dp), reasons


def _auto(ask: _Ask, shapes: list[Shape], pool: DeviceSet,
          dp: int) -> tuple[tuple[int, int] | None, list[str]]:
    limit = pool.count // dp if dp else pool.count
    if limit < 1:
        return None, [f"dp={dp} needs at least {_count(dp, 'device')}; {pool.count} available"]
    singles = [s for s in shapes if s.dp == 1 and s.tp <= limit]
    enough = next((s for s in singles if s.sequences >= ask.concurrency), None)
    pick = enough or next((s for s in singles if s.fits), None)
    reasons = [f"tp={s.tp}: {s.why}" for s in singles if pick is None or s.tp < pick.tp]
    if pick is None:
        return None, reasons + [f"nothing fits on {pool.label}: " + _smaller(ask, pool, limit)]
    if enough:
        need = ask.concurrency * ask.length * pick.kv_bytes_per_token
        reasons.append(f"tp={pick.tp} is the smallest TP that holds the weights "
                       f"({fmt_bytes(pick.weights_per_device)}) and KV for {ask.concurrency} sequences "
                       f"of {ask.length} tokens ({fmt_bytes(need)} of {fmt_bytes(pick.kv_per_device)}) "
                       "per device")
    else:
        fewer = _smaller_flags(ask, pool, limit)
        reasons.append(f"no TP up to {limit} holds {ask.concurrency} sequences of {ask.length} tokens; "
                       f"tp={pick.tp} is the smallest that fits, holding {pick.sequences}: lower "
                       "--max-model-len or the concurrency" + (f", or {_flags(ask, fewer)}" if fewer else ""))
    replicas = dp or pool.count // pick.tp
    idle = pool.count - replicas * pick.tp
    reasons.append(f"dp={replicas}: " + (f"{_count(pool.count, 'device')} // tp={pick.tp}" if not dp
                                         else "as asked")
                   + (f"; {_count(idle, 'device')} left idle" if idle else ""))
    return (pick.tp, replicas), reasons


# The load flags that shrink a model, mildest first: 8-bit weights, then an fp8 KV cache too.
def _flag_sets(ask: _Ask, pool: DeviceSet) -> list[dict[str, str]]:
    weights = "fp8" if pool.kind == "cuda" else "int8"  # int8 is the fast one on CPUs
    sets = [] if ask.quantization else [{"quantization": weights}]
    if ask.kv_cache_dtype != "fp8":
        sets.append({**({} if ask.quantization else {"quantization": weights}), "kv_cache_dtype": "fp8"})
    return sets


def _smaller_flags(ask: _Ask, pool: DeviceSet, limit: int | None = None) -> tuple[dict[str, str], Shape] | None:
    """The mildest flags with which some single replica holds a sequence, and that shape."""
    limit = limit or pool.count
    for flags in _flag_sets(ask, pool):
        smaller = replace(ask, **flags)
        fits = [s for t in ask.cfg.valid_tp_degrees(limit) if (s := _shape(smaller, t, 1)).fits]
        if fits:
            return flags, fits[0]
    return None


def _flags(ask: _Ask, found: tuple[dict[str, str], Shape]) -> str:
    flags, shape = found
    words = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items())
    return f"`mgpud load {ask.model} {words}` fits at tp={shape.tp}"


def _smaller(ask: _Ask, pool: DeviceSet, limit: int) -> str:
    found = _smaller_flags(ask, pool, limit)
    if found:
        return _flags(ask, found) + " (or use more devices, or a lower --max-model-len)"
    return "use more devices or a lower --max-model-len"


def _knee_reason(tp: int, knee: int, valid: list[int]) -> str | None:
    if len(valid) == 1:
        return None
    if knee == valid[-1]:
        return (f"the decode estimate keeps improving up to tp={knee}, the largest TP these "
                "devices allow: no diminishing-returns point below it")
    after = valid[valid.index(knee) + 1]
    reason = (f"diminishing returns past tp={knee}: tp={after} adds less than {MIN_GAIN:.0%} "
              "decode throughput per replica")
    return reason + (f"; tp={tp} is past it, its devices would serve more as replicas" if tp > knee else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _indivisible(cfg: ModelConfig, tp: int) -> str:
    parts = [f"{n} {what}" for n, what in ((cfg.num_heads, "attention heads"),
                                           (cfg.num_kv_heads, "KV heads")) if n % tp]
    return f"each rank holds whole heads, and {' and '.join(parts)} cannot be split {tp} ways"


def _impossible(cfg: ModelConfig, count: int) -> dict[int, str]:
    return {tp: _indivisible(cfg, tp) for tp in range(2, count + 1)
            if cfg.num_heads % tp or cfg.num_kv_heads % tp}


def _notes(ask: _Ask) -> list[str]:
    notes = [f"KV room is the explicit {fmt_bytes(ask.kv_cache_memory)} per device" if ask.kv_cache_memory
             is not None else "KV room is after an estimate of activations; the engine measures them at "
             "load time and sizes the KV cache from that"]
    if ask.cfg.architecture not in SUPPORTED_ARCHITECTURES:
        notes.append(f"{ask.cfg.architecture}: a plan only; this engine does not serve it yet")
    if ask.hw:
        notes.append(f"tok/s: decode estimate on {ask.hw.name} with batch = min(concurrency, "
                     f"sequences) per replica, each sequence {ask.length // 2} tokens in")
    return notes
