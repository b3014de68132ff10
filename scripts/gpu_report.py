"""scripts/gpu-check's last step: its stages' outcomes and outputs as one JSON file, and a summary.

    python scripts/gpu_report.py WORK_DIR OUT_FILE

WORK_DIR holds, per stage NAME (in the order of `stages.tsv`: name, status, seconds),
NAME.out (the stage's stdout; a JSON benchmark's object is its last line) and NAME.err;
`pytest.xml` is the GPU tests' JUnit report; `gpu.csv` is nvidia-smi's answer to
`--query-gpu=name,driver_version,memory.total`. Exits 1 unless every stage passed.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

PASSED = "ok"


def stage_outcomes(work: Path) -> list[dict[str, Any]]:
    rows = []
    for line in (work / "stages.tsv").read_text().splitlines():
        name, status, seconds = line.split("\t")
        rows.append({"name": name, "status": status, "seconds": int(seconds)})
    return rows


def last_json(text: str) -> dict[str, Any] | None:
    """The JSON object a benchmark prints last, or None."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def pytest_counts(xml: Path) -> dict[str, int] | None:
    if not xml.is_file():
        return None
    suites = ElementTree.parse(xml).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    if suite is None:
        return None
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def gpu_identity(csv: Path) -> list[dict[str, str]]:
    if not csv.is_file():
        return []
    gpus = []
    for line in csv.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def build(work: Path) -> dict[str, Any]:
    stages = stage_outcomes(work)
    for stage in stages:
        out, err = work / f"{stage['name']}.out", work / f"{stage['name']}.err"
        result = last_json(out.read_text(errors="replace")) if out.is_file() else None
        if result is not None:
            stage["result"] = result
        if stage["status"] != PASSED and err.is_file():
            stage["stderr_tail"] = err.read_text(errors="replace")[-3000:]
    return {"gpus": gpu_identity(work / "gpu.csv"), "host": platform.node(), "python": platform.python_version(),
            "commit": _commit(), "pytest": pytest_counts(work / "pytest.xml"), "stages": stages,
            "passed": all(s["status"] == PASSED for s in stages)}


def summary(report: dict[str, Any]) -> str:
    gpus = ", ".join(f"{g['name']} (driver {g['driver']})" for g in report["gpus"]) or "no GPU found"
    lines = [f"gpu-check on {gpus}"]
    for stage in report["stages"]:
        lines.append(f"  {stage['name']:<10} {stage['status']:<8} {stage['seconds']:>4} s")
    if report["pytest"]:
        p = report["pytest"]
        lines.append(f"  tests: {p['passed']} passed, {p['failures'] + p['errors']} failed, {p['skipped']} skipped")
    lines.append("PASSED" if report["passed"] else "FAILED: see the stages above and their stderr_tail in the report")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    work, out = Path(argv[0]), Path(argv[1])
    report = build(work)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    print(f"report: {out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
