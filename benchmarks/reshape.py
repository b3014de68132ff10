"""How long a daemon takes to start, load and reshape, one run: a real `mgpud` daemon on
two CPU devices, the demo model (SmolLM2-135M) with the load's defaults.

    python benchmarks/reshape.py [--json] [--quick]

Reports `daemon_start_s` (process start to answering requests), `load_dp2_s` (tp=1 x
dp=2, waited for until ready), `scale_down_s` (dp 2 -> 1) and `scale_up_s` (dp 1 -> 2),
each the best of the rounds run. Targets: 0.5 / 5 / 1 / 3 s. The load and the scale-up
start once the daemon's warm workers are ready, as on a daemon that has been up a few
seconds; `warm_pool_fill_s` is how long the pool took to fill after the daemon started.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import bench_model, bench_model_label, benchmark
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import Client

DEVICES = "cpu:2"
MODEL = "demo"


def timed(action: Any, *args: Any, **kwargs: Any) -> float:
    start = time.perf_counter()
    action(*args, **kwargs)
    return time.perf_counter() - start


def wait_warm(client: Client, timeout: float = 300.0) -> None:
    """Until the daemon's warm worker pool is full."""
    deadline = time.monotonic() + timeout
    while (pool := client.call("status")["warm_workers"])["ready"] < pool["target"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the warm worker pool did not fill in {timeout:.0f} s: {pool}")
        time.sleep(0.05)


def one_round(model: str) -> dict[str, float]:
    daemon = DaemonProcess("--log-level", "warning", "--warm-workers", "2", devices=DEVICES)
    try:
        figures = {"daemon_start_s": timed(daemon.start)}
        with daemon.client(timeout=600.0) as client:
            figures["warm_pool_fill_s"] = timed(wait_warm, client)
            figures["load_dp2_s"] = timed(client.call, "load", model=model, name=MODEL, tp=1, dp=2)
            figures["scale_down_s"] = timed(client.call, "reconfigure", name=MODEL, dp=1)
            wait_warm(client)
            figures["scale_up_s"] = timed(client.call, "reconfigure", name=MODEL, dp=2)
            client.call("unload", name=MODEL, force=True)
        return figures
    finally:
        daemon.close()


@benchmark("reshape", __doc__, quick_help="one round instead of three")
def main(args: argparse.Namespace) -> dict[str, Any]:
    model = str(bench_model(args.quick))  # prepared once beforehand: that is not a load
    rounds = [one_round(model) for _ in range(1 if args.quick else 3)]
    best = {key: min(r[key] for r in rounds) for key in rounds[0]}
    return {**best, "rounds": len(rounds), "devices": DEVICES,
            "model": f"{bench_model_label(args.quick)}, tp=1, defaults"}


if __name__ == "__main__":
    main()
