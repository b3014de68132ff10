"""Session fixtures: tiny random checkpoints (built once) and engine helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402

from checkpoints import make_tiny_checkpoint  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random float32 checkpoints: one per architecture, plus tied and sharded variants."""
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "llama": make_tiny_checkpoint(root / "llama", "llama"),
        "mistral": make_tiny_checkpoint(root / "mistral", "mistral", seed=1),
        "qwen2": make_tiny_checkpoint(root / "qwen2", "qwen2", seed=2),
        "llama-tied-sharded": make_tiny_checkpoint(root / "llama-ts", "llama", tied=True, shards=3, seed=3),
    }


@pytest.fixture(scope="session")
def tiny_llama(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """SmolLM2-135M-Instruct in the user's cache, prepared once (about 30 s the first time)."""
    from mgpud.engine.store.demo import demo_model_dir

    return demo_model_dir()


@pytest.fixture(scope="session")
def tiny_moe_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random float32 checkpoints of dense Qwen3 and the mixture-of-experts families."""
    root = tmp_path_factory.mktemp("moe")
    archs = ("qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
    return {arch: make_tiny_checkpoint(root / arch, arch, seed=10 + n) for n, arch in enumerate(archs)}
