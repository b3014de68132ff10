"""The embedded demo model: cache location, one-time preparation, concurrent callers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

from mgpud.engine.store import demo
from mgpud.engine.exceptions import ModelLoadError
from oracle import hf_chat_ids, hf_greedy

# A preparing process whose build copies the session's converted demo model (the real GGUF
# conversion runs once, in the demo_model fixture) once the test writes to the FIFO `go`:
# the test holds the first build there until the second process is waiting on the lock.
_PREPARE = """
import json, shutil, sys
from pathlib import Path
from mgpud.engine.store import demo
source, go = sys.argv[1], sys.argv[2]
def build(work, report):
    report("converting (a copy of the converted demo model)")
    print("building", file=sys.stderr, flush=True)
    open(go).read()
    shutil.copytree(source, work / "model")
demo._build = build
msgs = []
def note(msg):
    msgs.append(msg)
    print(msg, file=sys.stderr, flush=True)
path = demo.demo_model_dir(note)
print(json.dumps({"path": str(path), "msgs": msgs}))
"""


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MGPUD_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo.cache_dir() == tmp_path / "home" / ".cache" / "mgpud"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.cache_dir() == tmp_path / "xdg" / "mgpud"
    monkeypatch.setenv("MGPUD_CACHE_DIR", str(tmp_path / "own"))
    assert demo.cache_dir() == tmp_path / "own"


def test_resolve_model_passes_paths_through(tmp_path: Path) -> None:
    assert demo.resolve_model(str(tmp_path / "no-such-model")) == tmp_path / "no-such-model"


def test_build_is_atomic_and_cleans_crashed_builds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MGPUD_CACHE_DIR", str(tmp_path))
    stale = tmp_path / "models" / ".SmolLM2-135M-Instruct.build-crashed"
    stale.mkdir(parents=True)

    def failing_build(work: Path, report: demo.Progress) -> None:
        (work / "model").mkdir()
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(demo, "_build", failing_build)
    with pytest.raises(RuntimeError):
        demo.demo_model_dir()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".SmolLM2-135M-Instruct.lock"]

    def fake_build(work: Path, report: demo.Progress) -> None:
        (work / "model").mkdir()
        (work / "model" / "config.json").write_text("{}")

    monkeypatch.setattr(demo, "_build", fake_build)
    msgs: list[str] = []
    path = demo.demo_model_dir(msgs.append)
    assert path == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert (path / "config.json").is_file() and msgs[-1].startswith("done")
    assert not list((tmp_path / "models").glob(".*.build-*"))


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError, match=r"mgpud\[demo\]"):
        demo._convert(tmp_path / "model.gguf", tmp_path / "out", lambda _msg: None)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> tuple[Path, list[dict]]:
    """Two processes prepare the demo model at once into a fresh cache, shared by this module:
    the second starts while the first holds the lock and is released once it waits."""
    cache = tmp_path_factory.mktemp("demo-cache")
    go = cache / "go"
    os.mkfifo(go)
    env = {**os.environ, "MGPUD_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}

    def start(until: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _PREPARE, str(demo_model), str(go)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while until not in (line := proc.stderr.readline()):
            assert line, f"the preparing process ended before saying {until!r}"
        return proc

    procs = [start("building"), start("waiting")]
    go.write_text("go")
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return cache, results


@pytest.mark.slow
def test_concurrent_preparations_convert_once(prepared: tuple[Path, list[dict]]) -> None:
    cache, results = prepared
    assert {r["path"] for r in results} == {str(cache / "models" / "SmolLM2-135M-Instruct")}
    converting = [r for r in results if any(m.startswith("converting") for m in r["msgs"])]
    assert len(converting) == 1
    waiter = results[1 - results.index(converting[0])]
    assert waiter["msgs"][0].startswith("waiting")
    assert not list((cache / "models").glob(".*.build-*"))


@pytest.mark.slow
def test_second_call_returns_at_once(prepared: tuple[Path, list[dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    cache, _ = prepared
    monkeypatch.setenv("MGPUD_CACHE_DIR", str(cache))

    def no_second_build(*args: object) -> None:
        raise AssertionError("the prepared model was converted again")

    def no_lock(*args: object) -> None:
        raise AssertionError("a prepared model should need no lock: it would wait on a running preparation")

    monkeypatch.setattr(demo, "_build", no_second_build)
    monkeypatch.setattr(demo.fcntl, "flock", no_lock)
    msgs: list[str] = []
    path = demo.resolve_model(demo.DEMO_NAME, msgs.append)
    assert msgs == []
    assert path == cache / "models" / "SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_folder_is_a_complete_hf_model(prepared: tuple[Path, list[dict]]) -> None:
    path = Path(prepared[1][0]["path"])
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    with safe_open(path / "model.safetensors", "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tokenizer.token_to_id("<|im_end|>") == 2
    template = json.loads((path / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|im_start|>" in template and "<|im_end|>" in template
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == 2


@pytest.mark.slow
def test_demo_answers_a_chat_prompt(prepared: tuple[Path, list[dict]]) -> None:
    path = Path(prepared[1][0]["path"])
    ids = hf_chat_ids(path, [{"role": "user", "content": "What is the capital of France?"}])
    out = hf_greedy(path, ids, 24)
    assert out[-1] == 2
    assert "Paris" in Tokenizer.from_file(str(path / "tokenizer.json")).decode(out)
