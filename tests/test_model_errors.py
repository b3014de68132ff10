"""A model that cannot load is refused with the true reason, naming the file or the limit
and what to do: before any device is counted, and before any worker starts."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from mgpud.daemon.testing import DaemonProcess
from mgpud.engine.core.prepared import check_model_dir
from mgpud.engine.exceptions import ModelLoadError
from mgpud.ipc import RemoteError

LIMITS = {"kv_cache_memory": 2 << 20, "max_model_len": 256}


def _corrupt_config(d: Path) -> Path:
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],\n')
    return d / "config.json"


def _truncate(d: Path, keep: Callable[[int], int]) -> Path:
    file = d / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:keep(len(data))])
    return file


def _corrupt_tokenizer_config(d: Path) -> Path:
    (d / "tokenizer_config.json").write_text("{")
    return d / "tokenizer_config.json"


def _empty_index(d: Path) -> Path:
    (d / "model.safetensors.index.json").write_text("{}")
    return d / "model.safetensors.index.json"


DAMAGES: dict[str, Callable[[Path], Path]] = {
    "config.json not JSON": _corrupt_config,
    "weights cut in the data": lambda d: _truncate(d, lambda n: n // 2),
    "weights cut in the header": lambda d: _truncate(d, lambda n: 40),
    "weights cut in the header's length": lambda d: _truncate(d, lambda n: 5),
    "no weight_map in the index": _empty_index,
}


@pytest.fixture
def copy(tiny_llama: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_llama, tmp_path / "model"))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_file_is_named_with_the_fix(copy: Path, damage: str) -> None:
    file = DAMAGES[damage](copy)
    with pytest.raises(ModelLoadError) as info:
        check_model_dir(copy)
    message = str(info.value)
    assert message.startswith(f"{file} is damaged or incomplete (") and "download the model again" in message


def test_a_damaged_tokenizer_config_is_named(copy: Path) -> None:
    from mgpud.engine.core.tokenizer import Tokenizer

    file = _corrupt_tokenizer_config(copy)
    with pytest.raises(ModelLoadError, match=f"^{file} is damaged or incomplete"):
        Tokenizer(copy)


@pytest.mark.parametrize("where", ["nowhere", "a file"])
def test_a_path_that_is_no_directory_says_so(tmp_path: Path, where: str) -> None:
    path = tmp_path / "model"
    if where == "a file":
        path.write_text("")
    with pytest.raises(ModelLoadError, match="does not exist" if where == "nowhere" else "is not a directory"):
        check_model_dir(path)


def test_the_daemon_gives_the_model_s_reason_before_the_devices(tiny_llama: Path, copy: Path) -> None:
    with DaemonProcess() as d, d.client(timeout=60) as c:
        c.call("load", model=str(tiny_llama), name="first", tp=1, dp=1, **LIMITS)  # one device of two left

        def refusal(**args: object) -> str:
            with pytest.raises(RemoteError) as info:
                c.call("load", **args)
            assert info.value.code == "load_failed"
            return info.value.message

        heads = refusal(model="demo", tp=2, dp=1)
        assert "9 attention heads and 3 KV heads" in heads and "tp may be 1, 3" in heads
        c.call("load", model=str(tiny_llama), name="second", tp=1, dp=1, **LIMITS)  # none left
        assert "/nonexistent does not exist" in refusal(model="/nonexistent", tp=1, dp=1)
        assert "/nonexistent does not exist" in refusal(model="/nonexistent")  # the planner would choose
        damaged = _truncate(copy, lambda n: n // 2)
        assert f"{damaged} is damaged or incomplete" in refusal(model=str(copy), name="third", tp=1, dp=1)
        config = _corrupt_config(copy)
        assert f"{config} is damaged or incomplete (it is not valid JSON" in refusal(model=str(copy), name="third")
        assert [m["name"] for m in c.call("models")["models"]] == ["first", "second"]
