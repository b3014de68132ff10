"""A mixture-of-experts model served by a real daemon with expert parallelism, loaded by
`mgpud load --ep`: token-to-expert counts and the load balance in `ps`, `status --json`
and the Prometheus exposition; a live reshape to TP-sharded experts and back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from mgpud.cli.main import cli
from mgpud.daemon.testing import DaemonProcess
from mgpud.engine.config import ModelConfig
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

PROMPT = list(range(5, 15))
MAX_TOKENS = 6


def mgpud(daemon: DaemonProcess, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--runtime-dir", str(daemon.runtime_dir), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def daemon(tiny_moe_models: dict[str, Path]) -> Iterator[DaemonProcess]:
    with DaemonProcess() as d:
        mgpud(d, "load", str(tiny_moe_models["qwen3_moe"]), "--name", "moe", "--tp", "2", "--dp", "1", "--ep",
              "--kv-cache-memory", "2MiB", "--max-model-len", "256", "--dtype", "float32")
        yield d


@pytest.mark.slow
def test_expert_counts_and_balance_are_reported(daemon: DaemonProcess, tiny_moe_models: dict[str, Path]) -> None:
    cfg = ModelConfig.from_dir(tiny_moe_models["qwen3_moe"])
    daemon.call("generate", model="moe", prompt=PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
    # Every token fed to the model (the prompt, then each new token but the last) is routed
    # to top-k experts in every MoE layer.
    moe_layers = sum(cfg.is_moe_layer(n) for n in range(cfg.num_layers))
    routed = (len(PROMPT) + MAX_TOKENS - 1) * cfg.experts_per_token * moe_layers
    wait_for(lambda: daemon.call("models")["models"][0]["stats"]["expert_tokens_total"] == routed,
             "the token-to-expert counts", 30)
    stats = daemon.call("models")["models"][0]["stats"]
    balance = stats["expert_balance"]
    assert 1 / 2 <= balance <= 1  # two EP ranks: 1/2 when one rank took every token

    status = json.loads(mgpud(daemon, "status", "--json"))
    assert status["models"][0]["expert_balance"] == balance
    assert f"{balance:.2f}" in mgpud(daemon, "ps")
    families = {f.name: f for f in text_string_to_metric_families(mgpud(daemon, "metrics", "--prometheus"))}
    assert families["mgpud:expert_balance"].samples[0].value == pytest.approx(balance)
    assert families["mgpud:expert_tokens"].samples[0].value == routed



@pytest.mark.slow
def test_reshape_between_placements_drops_nothing(daemon: DaemonProcess) -> None:
    ask = {"model": "moe", "prompt": PROMPT, "max_tokens": 24, "ignore_eos": True}
    with daemon.client(timeout=120) as client:
        before = client.call("generate", **ask)["token_ids"]
        running = client.stream("generate", **ask)
        mgpud(daemon, "scale", "moe", "--no-ep")  # while that generation runs
        result = running.wait()
        after = client.call("generate", **ask)["token_ids"]
    assert result["finish_reason"] == "length", result
    stats = daemon.call("models")["models"][0]["stats"]
    assert not stats["expert_parallel"] and stats["requests_failed"] == 0
    assert "2 x 1 ep" not in mgpud(daemon, "ps")
    # The same greedy tokens from every placement.
    assert result["token_ids"] == before == after
    mgpud(daemon, "scale", "moe", "--ep")
    assert daemon.call("models")["models"][0]["stats"]["expert_parallel"]
    assert "2 x 1 ep" in mgpud(daemon, "ps")
