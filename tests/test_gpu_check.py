"""scripts/gpu-check without a GPU: the script parses, its report says which stage failed,
and its benchmark imports. Its GPU stages run where a GPU is (see docs/architecture.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "benchmarks")]

import gpu_report

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0"
failures="1" skipped="2" tests="12" time="50.1"></testsuite></testsuites>"""


def test_the_script_is_executable_bash() -> None:
    script = ROOT / "scripts" / "gpu-check"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


def _work(tmp_path: Path, stages: list[tuple[str, str]]) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "stages.tsv").write_text("".join(f"{name}\t{status}\t7\n" for name, status in stages))
    (work / "gpu.csv").write_text("NVIDIA H100 80GB HBM3, 570.86.15, 81559 MiB\n")
    (work / "kernels.out").write_text('warming up\n{"device": "NVIDIA H100 80GB HBM3", "hbm_peak_gb_s": 3352.3}\n')
    (work / "tests.err").write_text("E   AssertionError: tokens differ\n")
    (work / "pytest.xml").write_text(JUNIT)
    return work


def test_the_report_names_the_failed_stage_and_keeps_the_figures(tmp_path: Path, capsys) -> None:
    work = _work(tmp_path, [("venv", "ok"), ("tests", "failed"), ("kernels", "ok"), ("engine", "timeout")])
    out = tmp_path / "results" / "gpu-x.json"
    assert gpu_report.main([str(work), str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["gpus"] == [{"name": "NVIDIA H100 80GB HBM3", "driver": "570.86.15", "memory": "81559 MiB"}]
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["kernels"]["result"]["hbm_peak_gb_s"] == 3352.3
    assert "tokens differ" in stages["tests"]["stderr_tail"] and "stderr_tail" not in stages["kernels"]
    assert report["pytest"] == {"tests": 12, "failures": 1, "errors": 0, "skipped": 2, "passed": 9}
    printed = capsys.readouterr().out
    assert "engine     timeout" in printed and printed.count("FAILED") == 1


def test_all_stages_passing_exit_zero(tmp_path: Path) -> None:
    work = _work(tmp_path, [("venv", "ok"), ("kernels", "ok")])
    assert gpu_report.main([str(work), str(tmp_path / "gpu.json")]) == 0


def test_the_engine_benchmark_imports_without_a_gpu() -> None:
    import gpu_engine

    assert set(gpu_engine.STAGES) == {"engine", "daemon"}
