"""Run the benchmark suite, one benchmark at a time, and summarise it.

    python benchmarks/run_all.py [--quick] [NAME ...]

Every `benchmarks/*.py` with a `--json` mode runs in its own process (by default all of
them; `make bench` and `make bench-quick` call this). Each writes its own
results/NAME.json (NAME.quick.json with --quick). This script adds results/summary.json
(every benchmark's object, the machine and the command) and results/summary.md: the
headline figures against their targets, the table the README's Performance section
shows. A benchmark that fails is reported and the others still run; the exit status
is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS = HERE / "results"
HELPERS = {"common", "run_all"}

# benchmark -> (label, dotted key, target); only the figures a reader compares.
HEADLINES: dict[str, list[tuple[str, str, str]]] = {
    "throughput": [("mgpud output tokens/s (tp=1)", "mgpud_tok_s", ""),
                   ("mgpud / transformers tokens/s", "ratio", ">= 3"),
                   ("share of the fp32 matmul roofline", "roofline_fraction", ">= 0.5"),
                   ("mgpud output tokens/s with bf16 weights (not compared)", "mgpud_bf16_tok_s", "")],
    "scaling": [(f"tokens/s tp={tp} dp={dp}", f"tp{tp}_dp{dp}.tokens_per_s", "")
                for tp, dp in ((1, 1), (1, 2), (3, 1))],
    "control_latency": [("status p99 idle (ms)", "idle_p99_ms", ""),
                        ("status p99 saturated (ms)", "loaded_p99_ms", "< 10")],
    "http_overhead": [("output tokens/s through HTTP (openai client, streaming)", "http_tok_s", ""),
                      ("output tokens/s through the control socket", "zmq_tok_s", ""),
                      ("HTTP / control socket tokens/s", "ratio", ">= 0.95"),
                      ("status p99 under 64 HTTP streams (ms)", "control_p99_ms", "< 10")],
    "serving": [row for dp in (1, 2)
                for row in ((f"dp={dp} peak output tokens/s", f"dp{dp}.max_output_tokens_per_s", ""),
                            (f"dp={dp} knee (requests/s)", f"dp{dp}.knee_rps", ""))],
    "load_time": [("load / raw read, synthetic checkpoint, tp=1, warm", "synthetic_tp1.warm.ratio", "<= 1.5"),
                  ("load / raw read, synthetic checkpoint, tp=1, cold", "synthetic_tp1.cold.ratio", "<= 1.5"),
                  ("load / raw read, synthetic checkpoint, tp=2, warm", "synthetic_tp2.warm.ratio", "<= 1.5"),
                  ("load / raw read, SmolLM2, tp=1, warm", "smollm2_tp1.warm.ratio", "<= 1.5"),
                  ("synthetic checkpoint size (bytes)", "synthetic_tp1.warm.checkpoint_bytes", "")],
    "reshape": [("daemon start to answering (s)", "daemon_start_s", "<= 0.5"),
                ("load demo tp=1 x dp=2, defaults (s)", "load_dp2_s", "<= 5"),
                ("scale dp 1 -> 2 (s)", "scale_up_s", "<= 3"), ("scale dp 2 -> 1 (s)", "scale_down_s", "<= 1")],
    "step_overhead": [("step time outside the forward, batch 1", "batch_1.overhead_fraction", ""),
                      ("step time outside the forward, batch 64", "batch_64.overhead_fraction", "<= 0.10")],
    "kv_efficiency": [("KV waste (1 - peak running / theoretical)", "waste_fraction", "< 0.04"),
                      ("prefix caching on / off throughput", "prefix_caching_speedup", ">= 2")],
    "quantization": [("int8 weight bytes / bf16 load's", "int8.bytes_vs_bf16", "<= 0.55"),
                     ("fp8 weight bytes / bf16 load's", "fp8.bytes_vs_bf16", "<= 0.55"),
                     ("int8 perplexity / default load's", "int8.perplexity_ratio", "<= 1.01"),
                     ("fp8 perplexity / default load's", "fp8.perplexity_ratio", "<= 1.03"),
                     ("int8 single-stream decode / default load's", "int8.decode_speedup", ">= 1.5")],
    "memory_overhead": [("RSS beyond weights + KV, tp=1 (MiB)", "overhead_mib_tp1", ""),
                        ("bare `import torch` process RSS (MiB)", "bare_torch.rss_mib", "")],
}


def benchmarks(names: list[str]) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.stem not in HELPERS)
    unknown = set(names) - {p.stem for p in found}
    if unknown:
        raise SystemExit(f"no such benchmark: {', '.join(sorted(unknown))}; "
                         f"have {', '.join(p.stem for p in found)}")
    return [p for p in found if not names or p.stem in names]


def run(script: Path, quick: bool) -> dict[str, Any]:
    """The benchmark's JSON object, or {"error": ...} with the end of its stderr."""
    cmd = [sys.executable, str(script), "--json", *(["--quick"] if quick else [])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=HERE)
    took = time.perf_counter() - start
    status = "ok" if proc.returncode == 0 else "FAILED"
    print(f"{script.stem}: {status} in {took:.0f} s", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}", "seconds": took}
    lines = proc.stdout.strip().splitlines()
    return {**json.loads(lines[-1]), "seconds": took}


def machine() -> dict[str, Any]:
    import psutil
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                            text=True, cwd=HERE)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit.stdout.strip(),
            "date": datetime.date.today().isoformat()}


def lookup(result: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| benchmark | figure | value | target |", "|---|---|---|---|"]
    for name, result in results.items():
        if "error" in result or "skipped" in result:
            rows.append(f"| {name} | | {'failed' if 'error' in result else result['skipped']} | |")
            continue
        for label, key, target in HEADLINES.get(name, []):
            value = lookup(result, key)
            shown = f"{value:.3g}" if isinstance(value, float) else ("n/a" if value is None else str(value))
            rows.append(f"| {name} | {label} | {shown} | {target} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke runs")
    ap.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = ap.parse_args()
    suffix = ".quick" if args.quick else ""
    # Running some benchmarks again updates their rows and keeps the others'.
    previous = RESULTS / f"summary{suffix}.json"
    results = json.loads(previous.read_text())["results"] if args.names and previous.exists() else {}
    results.update({script.stem: run(script, args.quick) for script in benchmarks(args.names)})
    command = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    summary = {"machine": machine(), "command": command, "results": results}
    (RESULTS / f"summary{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    m = summary["machine"]
    header = (f"Measured {m['date']} at {m['commit']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"
              f"{', ' + ', '.join(m['gpus']) if m['gpus'] else ', no GPU'}; torch {m['torch']}; `{command}`.\n\n")
    (RESULTS / f"summary{suffix}.md").write_text(header + table(results))
    print(header + table(results))
    sys.exit(1 if any("error" in r for r in results.values()) else 0)


if __name__ == "__main__":
    main()
