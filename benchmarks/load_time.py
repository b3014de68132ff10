"""Time from load to ready against the time to read the same checkpoint files raw, in
one run: the demo model (SmolLM2-135M, bf16 on disk, served in fp32) at tp 1 and 3 (its
heads admit no 2), and a synthetic Llama checkpoint of about 2 GB (fp32, 16 heads, 4 KV
heads) at tp 1 and 2. Target: ratio (load_s / raw_read_s) at most 1.5.

    python benchmarks/load_time.py [--json] [--quick]

Each configuration is measured with a warm page cache (the files were just read) and a
cold one, where posix_fadvise(DONTNEED) drops the files from the cache; mincore(2) checks
that it did, and `cold` says why it was skipped when it did not. The engine starts its
ranks on warm workers (processes that have imported torch, as the daemon keeps them), so
`load_s`, from the engine's construction to ready, is the load a daemon pays; it splits
into `startup_s` (handing the ranks their work, model construction), `weights_s`
(reading and sharding the weights) and `profile_s` (activation profile, KV allocation),
as the engine's progress reports time its phases. The synthetic
checkpoint is written once, in shards, into the mgpud cache directory and reused.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import benchmark
from mgpud.engine import EngineConfig, ModelGroup
from mgpud.engine.core.loader import checkpoint_files
from mgpud.engine.core.warm import WarmPool
from mgpud.engine.serving.pool import DevicePool
from mgpud.engine.store.demo import cache_dir, demo_model_dir
from safetensors.torch import save_file

from mgpud.records import LoadProgress

TARGET_RATIO = 1.5
# (hidden, intermediate, layers, heads, kv heads): ~2.07 GB and ~0.1 GB in fp32; "1b"
# (gpu_engine.py): 1.17 B parameters, Llama-3.2-1B's layout with SmolLM2's vocabulary, in bf16.
SYNTHETIC = {"full": (2048, 5632, 7, 16, 4), "quick": (256, 704, 2, 4, 2), "1b": (2048, 8192, 16, 32, 8)}
SYNTHETIC_DTYPE = {"1b": torch.bfloat16}  # the others: float32
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
_READ_CHUNK = 64 << 20


# -- the synthetic checkpoint -------------------------------------------------------------

def _layer_tensors(i: int, hidden: int, inter: int, heads: int, kv_heads: int) -> dict[str, tuple[int, ...]]:
    head_dim = hidden // heads
    p = f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)}


def _shards(shape: tuple[int, int, int, int, int], vocab: int) -> list[dict[str, tuple[int, ...]]]:
    """Tensor shapes by shard: the embedding, each decoder layer, the head and final norm."""
    hidden, inter, layers, heads, kv_heads = shape
    return ([{"model.embed_tokens.weight": (vocab, hidden)}]
            + [_layer_tensors(i, hidden, inter, heads, kv_heads) for i in range(layers)]
            + [{"lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,)}])


def _write_config(folder: Path, shape: tuple[int, int, int, int, int], vocab: int, dtype: torch.dtype) -> None:
    from transformers import LlamaConfig

    hidden, inter, layers, heads, kv_heads = shape
    LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                tie_word_embeddings=False, dtype=str(dtype).removeprefix("torch."), bos_token_id=1, eos_token_id=2,
                architectures=["LlamaForCausalLM"]
                ).save_pretrained(folder)


def _write_weights(folder: Path, shape: tuple[int, int, int, int, int], vocab: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    shards = _shards(shape, vocab)
    weight_map = {}
    for n, tensors in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        # Norm weights near 1 and small projections keep the profile's forward finite.
        data = {k: (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) * 0.02).to(dtype)
                for k, s in tensors.items()}
        save_file(data, str(folder / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def synthetic_checkpoint(size: str) -> Path:
    """The synthetic model's folder, written on first use (atomically: a rename)."""
    target = cache_dir() / "bench" / f"synthetic-llama-{size}"
    if target.is_dir():
        return target
    demo = demo_model_dir()
    vocab = json.loads((demo / "config.json").read_text())["vocab_size"]
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=target.parent))
    try:
        dtype = SYNTHETIC_DTYPE.get(size, torch.float32)
        _write_config(build, SYNTHETIC[size], vocab, dtype)
        _write_weights(build, SYNTHETIC[size], vocab, dtype)
        for name in _TOKENIZER_FILES:
            if (demo / name).is_file():
                shutil.copy(demo / name, build / name)
        for file in build.iterdir():  # dirty pages cannot be dropped from the cache
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        build.rename(target)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


# -- the page cache -------------------------------------------------------------------------

def raw_read(files: list[Path]) -> float:
    """Seconds to read every byte of `files` into one reused buffer."""
    buf = bytearray(_READ_CHUNK)
    start = time.perf_counter()
    for file in files:
        with open(file, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def drop_from_cache(files: list[Path]) -> None:
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(files: list[Path]) -> float:
    """Share of the files' pages in the page cache, by mincore(2) on a mapping of each."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    resident = total = 0
    for file in files:
        size = file.stat().st_size
        pages = -(-size // mmap.PAGESIZE)
        with open(file, "rb") as f:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {file} failed")
        vec = (ctypes.c_ubyte * pages)()
        try:
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore on {file} failed")
        finally:
            libc.munmap(addr, size)
        resident += sum(b & 1 for b in vec)
        total += pages
    return resident / total if total else 0.0


# -- loading ----------------------------------------------------------------------------------

def timed_load(model: Path, tp: int) -> dict[str, float]:
    """Construct an engine on warm workers and time it, and its phases from its progress."""
    phases: dict[str, float] = {}

    def progress(p: LoadProgress) -> None:
        phases.update(p.seconds)

    cfg = EngineConfig(model=str(model), tp=tp, max_model_len=256, kv_cache_memory=32 << 20,
                       max_num_batched_tokens=64, max_num_seqs=4,
                       threads_per_device=max(1, (os.cpu_count() or 1) // tp))
    workers = WarmPool(tp)
    try:
        while workers.counts()[0] < tp:
            time.sleep(0.05)
        start = time.perf_counter()
        engine = ModelGroup(cfg, pool=DevicePool([f"cpu:{i}" for i in range(tp)], workers), progress=progress)
        ready = time.perf_counter()
        engine.shutdown()
    finally:
        workers.close()
    # With an explicit KV budget the engine skips profiling.
    return {"load_s": ready - start, "startup_s": phases["start"], "weights_s": phases["load"],
            "profile_s": phases.get("profile", 0.0) + phases["kv"]}


def measure(model: Path, tp: int, cold: bool) -> dict[str, Any]:
    files = checkpoint_files(model)
    if cold:
        drop_from_cache(files)
        left = resident_fraction(files)
        if left > 0.05:
            return {"skipped": f"posix_fadvise(DONTNEED) left {left:.0%} of the files cached"}
    else:
        raw_read(files)  # warm the cache
    read_s = raw_read(files)
    if cold:
        drop_from_cache(files)
    result = timed_load(model, tp)
    return {**result, "raw_read_s": read_s, "ratio": result["load_s"] / read_s,
            "weights_ratio": result["weights_s"] / read_s,
            "checkpoint_bytes": sum(f.stat().st_size for f in files)}


@benchmark("load_time", __doc__, quick_help="a small smoke run (a ~100 MB synthetic checkpoint)")
def main(args: argparse.Namespace) -> dict[str, Any]:
    synthetic = synthetic_checkpoint("quick" if args.quick else "full")
    configs = [("synthetic", synthetic, 1), ("synthetic", synthetic, 2)]
    if not args.quick:
        configs = [("smollm2", demo_model_dir(), 1), ("smollm2", demo_model_dir(), 3), *configs]
    result: dict[str, Any] = {f"{name}_tp{tp}": {"warm": measure(path, tp, cold=False),
                                                 "cold": measure(path, tp, cold=True)}
                              for name, path, tp in configs}
    headline = result["synthetic_tp1"]["warm"]
    result.update(load_s=headline["load_s"], raw_read_s=headline["raw_read_s"], ratio=headline["ratio"],
                  target_ratio=TARGET_RATIO)
    return result


if __name__ == "__main__":
    main()
