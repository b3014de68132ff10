"""Every benchmark runs (`--quick --json`, its own process) and reports what it promises.

Speed is not judged here: the figures only have to exist and be sane numbers. A new
benchmark file is picked up by itself and checked for one JSON object of finite numbers.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem not in ("common", "run_all"))


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and value > 0


def finite_numbers(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_numbers(v) for v in value)
    return True


def check_throughput(r: dict[str, Any]) -> None:
    assert all(positive(r[k]) for k in ("mgpud_tok_s", "transformers_tok_s", "ratio", "roofline_fraction"))
    assert r["mgpud_generated_tokens"] > 0


def check_scaling(r: dict[str, Any]) -> None:
    for shape in ("tp1_dp1", "tp1_dp2", "tp3_dp1", "tp1_dp1_2threads"):
        assert positive(r[shape]["tokens_per_s"]) and positive(r[shape]["ttft_p95_ms"]), shape


def check_kernels(r: dict[str, Any]) -> None:
    if not torch.cuda.is_available():  # it times Triton against torch on a GPU only
        assert r == {"skipped": "no CUDA device"}
        return
    assert "skipped" not in r, r  # a GPU is here: a skip would hide a broken benchmark
    assert r["results"] and {row["kernel"] for row in r["results"]} >= {"rms_norm", "paged_decode_attention"}
    for row in r["results"]:
        assert positive(row["torch_us"]) and positive(row["triton_us"]) and positive(row["triton_gb_s"]), row


def check_control_latency(r: dict[str, Any]) -> None:
    assert positive(r["idle_p99_ms"]) and positive(r["loaded_p99_ms"])


def check_http_overhead(r: dict[str, Any]) -> None:
    assert all(positive(r[k]) for k in ("http_tok_s", "zmq_tok_s", "ratio", "control_p99_ms"))
    assert r["http_generated_tokens"] > 0 and r["zmq_generated_tokens"] > 0


def check_step_overhead(r: dict[str, Any]) -> None:
    for batch in (1, 16, 64):
        b = r[f"batch_{batch}"]
        assert b["steps"] >= 1 and positive(b["step_ms"]) and positive(b["forward_ms"])
        assert b["forward_ms"] <= b["step_ms"] and 0 <= b["overhead_fraction"] < 1
        assert positive(b["wall_step_ms"])


def check_kv_efficiency(r: dict[str, Any]) -> None:
    a = r["admission"]
    assert 1 <= a["peak_running"] <= a["requests"] and 1 <= a["theoretical_max_running"] <= a["requests"]
    assert -1 < r["waste_fraction"] < 1 and 0 <= a["slot_waste_fraction"] < 1
    p = r["prefix_caching"]
    assert positive(r["prefix_caching_speedup"]) and p["outputs_identical"]
    assert p["on"]["hit_rate"] > 0 and p["off"]["hit_rate"] == 0


def check_memory_overhead(r: dict[str, Any]) -> None:
    (rank,) = r["tp1"]
    assert rank["rss_mib"] > rank["weights_mib"] + rank["kv_mib"] > 0
    assert positive(r["bare_torch"]["rss_mib"])


def check_load_time(r: dict[str, Any]) -> None:
    for config in ("synthetic_tp1", "synthetic_tp2"):
        for cache in ("warm", "cold"):
            m = r[config][cache]
            if cache == "cold" and "skipped" in m:
                continue
            assert all(positive(m[k]) for k in ("load_s", "raw_read_s", "ratio", "weights_s")), (config, cache)
    assert positive(r["ratio"])


def check_serving(r: dict[str, Any]) -> None:
    for dp in ("dp1", "dp2"):
        assert r[dp]["points"], dp
        for point in r[dp]["points"]:
            assert point["errors"] == 0, point
            assert positive(point["achieved_rps"]) and positive(point["output_tokens_per_s"])
            assert positive(point["ttft_p50_ms"]) and point["ttft_p95_ms"] >= point["ttft_p50_ms"]
    if importlib.util.find_spec("matplotlib"):  # the plot needs the `bench` extra
        assert (BENCHMARKS / r["plot"]).stat().st_size > 0


def check_gpu_engine(r: dict[str, Any]) -> None:
    if "skipped" in r:
        return
    for model in r.values():
        if isinstance(model, dict):
            assert all(positive(model[mode][b]["decode_tok_s"]) for mode in ("eager", "graphs")
                       for b in model[mode] if b.startswith("batch_"))


def check_moe_combine(r: dict[str, Any]) -> None:
    assert r["tokens"]
    for row in r["tokens"].values():
        assert positive(row["allreduce_us"]) and positive(row["all_to_all_us"])


def check_moe(r: dict[str, Any]) -> None:
    for shape in ("tp2_sharded", "tp2_ep", "tp1_dp2"):
        assert positive(r[shape]["tokens_per_s"]) and 0 < r[shape]["expert_balance"] <= 1, shape


def check_quantization(r: dict[str, Any]) -> None:
    for load in ("default", "bf16", "int8", "fp8"):
        assert positive(r[load]["weight_bytes"]) and positive(r[load]["perplexity"]), load
        assert positive(r[load]["decode_tok_s"]), load
    for load in ("int8", "fp8"):
        assert r[load]["quantization"] == load
        assert r[load]["weight_bytes"] < r["default"]["weight_bytes"]
        assert positive(r[load]["perplexity_ratio"]) and positive(r[load]["decode_speedup"])


def check_reshape(r: dict[str, Any]) -> None:
    assert all(positive(r[k]) for k in ("daemon_start_s", "warm_pool_fill_s", "load_dp2_s", "scale_down_s",
                                        "scale_up_s")), r


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "throughput": check_throughput, "scaling": check_scaling, "kernels": check_kernels,
    "control_latency": check_control_latency, "http_overhead": check_http_overhead,
    "step_overhead": check_step_overhead,
    "kv_efficiency": check_kv_efficiency, "memory_overhead": check_memory_overhead,
    "load_time": check_load_time, "serving": check_serving, "gpu_engine": check_gpu_engine,
    "moe_combine": check_moe_combine, "moe": check_moe,
    "quantization": check_quantization,
    "reshape": check_reshape,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_quick_run(name: str, demo_model: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--json"],
                          check=False, capture_output=True, text=True, cwd=BENCHMARKS, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict) and finite_numbers(result), result
    CHECKS.get(name, lambda _r: None)(result)
