"""Shared pieces of the benchmarks: workloads, the machine's matmul peak, the model a run
serves (the demo model, or for --quick a small synthetic Llama), and `benchmark`, the
command line every benchmark script has (--json, --quick, its result file)."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mgpud.engine.store.demo import cache_dir, demo_model_dir  # noqa: E402

# torch is imported where it is used: a script that only drives a daemon (and the client
# processes it spawns) starts seconds sooner without it.
if TYPE_CHECKING:
    import torch

RESULTS = Path(__file__).parent / "results"
# (hidden, intermediate, layers, heads, kv heads): "full" (load_time.py) ~2.07 GB in fp32;
# "small", the model of every --quick run, ~0.17 GB, its heads split at tp 1, 2 and 3;
# "1b" (gpu_engine.py): 1.17 B parameters, Llama-3.2-1B's layout with SmolLM2's vocabulary, in bf16.
# Each is written once under its name: a changed shape needs a new name.
SYNTHETIC = {"full": (2048, 5632, 7, 16, 4), "small": (384, 1152, 2, 6, 6), "1b": (2048, 8192, 16, 32, 8)}
SYNTHETIC_DTYPE = {"1b": "bfloat16"}  # the others: float32
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")

_TOPICS = ["the ocean", "volcanoes", "a small bakery", "the history of paper", "learning to swim",
           "black holes", "a city at night", "honeybees", "the first computers", "mountain weather",
           "chess openings", "a lighthouse keeper", "rainforests", "the moon landing", "coffee",
           "a lost key"]
_ASKS = ["Write a short poem about {t}.", "Explain {t} to a child.", "Give three facts about {t}.",
         "Tell a story about {t}, with a twist at the end. Make it vivid, with a named hero, a clear "
         "setting, some dialogue and a surprising but fair ending that a reader could have guessed.",
         "What should a beginner know about {t}? Answer as a numbered list, and keep each point to "
         "one sentence. Then add one sentence on where to learn more about {t} and why it matters."]


def chat_workload(n: int, min_tokens: int, max_tokens: int, seed: int = 0
                  ) -> list[tuple[list[dict[str, str]], int]]:
    """n (messages, max_tokens) pairs: chat prompts of varied lengths and output budgets."""
    rng = random.Random(seed)
    work = []
    for i in range(n):
        ask = _ASKS[i % len(_ASKS)].format(t=_TOPICS[rng.randrange(len(_TOPICS))])
        work.append(([{"role": "user", "content": ask}], rng.randint(min_tokens, max_tokens)))
    return work


def matmul_peak_flops(threads: int, size: int = 1024, seconds: float = 1.0,
                      dtype: torch.dtype | None = None) -> float:
    """Best GEMM FLOP/s this process reaches with `threads` threads in `dtype`."""
    import torch

    dtype = dtype or torch.float32
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


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


def _write_config(folder: Path, shape: tuple[int, int, int, int, int], vocab: int, dtype: str) -> None:
    from transformers import LlamaConfig

    hidden, inter, layers, heads, kv_heads = shape
    LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                tie_word_embeddings=False, dtype=dtype, bos_token_id=1, eos_token_id=2,
                architectures=["LlamaForCausalLM"]
                ).save_pretrained(folder)


def _write_weights(folder: Path, shape: tuple[int, int, int, int, int], vocab: int, dtype: str) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    shards = _shards(shape, vocab)
    weight_map = {}
    for n, tensors in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        # Norm weights near 1 and small projections keep the profile's forward finite.
        data = {k: (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) * 0.02).to(getattr(torch, dtype))
                for k, s in tensors.items()}
        save_file(data, str(folder / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, name)
    # transformers reads the index's metadata too.
    total = sum((folder / name).stat().st_size for name in set(weight_map.values()))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


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
        dtype = SYNTHETIC_DTYPE.get(size, "float32")
        _write_config(build, SYNTHETIC[size], vocab, dtype)
        _write_weights(build, SYNTHETIC[size], vocab, dtype)
        for name in _TOKENIZER_FILES:
            if (demo / name).is_file():
                shutil.copy(demo / name, build / name)
        for file in build.iterdir():  # dirty pages cannot be dropped from the cache
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        try:
            build.rename(target)
        except OSError:  # another process finished the same folder first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


def bench_model(quick: bool) -> Path:
    """The folder a benchmark serves: the demo model, or for a smoke run the small synthetic
    Llama (random weights, the demo's tokenizer), which runs the same code for a fraction
    of the compute and loads at tp 1, 2 or 3."""
    return synthetic_checkpoint("small") if quick else demo_model_dir()


def bench_threads(quick: bool, tp: int = 1) -> int:
    """Threads per rank: the machine's cores shared by the ranks; one in a smoke run, where
    a thread pool waiting on a busy machine's other core makes every small step slow."""
    return 1 if quick else max(1, (os.cpu_count() or 1) // tp)


def bench_model_label(quick: bool) -> str:
    hidden, _, layers, _, _ = SYNTHETIC["small"]
    return f"synthetic Llama ({layers} layers, hidden {hidden}; a smoke run)" if quick else "demo (SmolLM2-135M)"


def result_file(name: str, quick: bool, suffix: str = ".json") -> Path:
    """results/NAME.json, or results/NAME.quick.json for a smoke run, so that one never
    replaces a real measurement; `suffix` names a benchmark's other outputs the same way."""
    RESULTS.mkdir(exist_ok=True)
    return RESULTS / f"{name}{'.quick' if quick else ''}{suffix}"


def benchmark(name: str, doc: str | None, *, add_args: Callable[[argparse.ArgumentParser], object] | None = None,
              quick_help: str = "a small smoke run", show: Callable[[dict[str, Any]], None] | None = None,
              save: bool = True) -> Callable[[Callable[[argparse.Namespace], dict[str, Any]]], Callable[..., None]]:
    """Turn `measure(args) -> result` into the benchmark's `main(argv=None)`.

    `main` parses --json, --quick (`quick_help`) and whatever `add_args` adds, runs
    `measure`, keeps the result in `result_file(name, args.quick)` unless `save` is off,
    and prints it: one JSON object with --json (run_all.py and the tests read the last
    line), else `show(result)`, by default a `key: value` line per figure.
    """
    def wrap(measure: Callable[[argparse.Namespace], dict[str, Any]]) -> Callable[..., None]:
        def main(argv: list[str] | None = None) -> None:
            ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
            ap.add_argument("--json", action="store_true", help="print one JSON object")
            ap.add_argument("--quick", action="store_true", help=quick_help)
            if add_args is not None:
                add_args(ap)
            args = ap.parse_args(argv)
            result = measure(args)
            if save:
                result_file(name, args.quick).write_text(json.dumps(result, indent=2) + "\n")
            if args.json:
                print(json.dumps(result))
            else:
                (show or _show)(result)
            sys.stdout.flush()
        return main
    return wrap


def _show(result: dict[str, Any]) -> None:
    for key, value in result.items():
        print(f"{key:>28}: {_fmt(value)}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "  ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)
