"""Checkpoint loading: every rank reads only the slices it keeps.

Tensors are opened through `safe_open(...).get_slice`, so a rank touches only the rows
or columns its layer asks for (the file is memory-mapped; untouched pages are never
read). Progress is reported in checkpoint bytes and tensors walked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open
from torch import nn

from mgpud.records import LoadProgress

from ..exceptions import ModelLoadError
from ..jsonfile import damaged, read_json

# Buffers some checkpoints carry that we compute ourselves; fp8 checkpoints' static
# activation scales, unused where activations stay in the model dtype.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".input_scale")
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise damaged(index, "it has no weight_map")
        names = sorted(set(weight_map.values()))
        files = [model_dir / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{model_dir}: shard(s) listed in {index.name} are missing: "
                                 f"{', '.join(missing)}; re-download or re-convert the model")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir} has no *.safetensors weights; mgpud loads Hugging Face "
                             "safetensors checkpoints (convert .bin/.gguf with transformers first)")
    return files


def _tensor_bytes(header: dict) -> int:
    count = 1
    for n in header["shape"]:
        count *= n
    return count * _DTYPE_BYTES.get(header["dtype"], 2)


def check_checkpoint(model_dir: Path) -> list[Path]:
    """The weight files, each checked whole (its header read, its size against it), so
    that a truncated download is named here rather than failing in a worker."""
    files = checkpoint_files(model_dir)
    for file in files:
        _headers(file)
    return files


def _headers(file: Path) -> dict[str, dict]:
    """A safetensors file's tensors: an 8-byte header length, a JSON header, the data."""
    size = file.stat().st_size
    with file.open("rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        if size < 8 + length:
            raise damaged(file, f"its header is cut short: the file holds {size} bytes")
        try:
            meta = json.loads(fh.read(length))
            meta.pop("__metadata__", None)
            end = max((int(h["data_offsets"][1]) for h in meta.values()), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise damaged(file, f"its header is not a safetensors header: {exc}") from None
    if size < 8 + length + end:
        raise damaged(file, f"it holds {size} bytes, its header describes {8 + length + end}")
    return meta


_EXPERT = re.compile(r"\.experts\.(\d+)\.")


def _target(name: str, model: nn.Module) -> tuple[str, int | tuple[int, int]]:
    """Our parameter for checkpoint tensor `name`, and the shard its loader gets: the part
    of a fused tensor, or (expert, part) for one expert's tensor of a stacked parameter."""
    for theirs, ours in model.renamed.items():
        name = name.replace(f".{theirs}.", f".{ours}.")
    expert = _EXPERT.search(name)
    if expert:
        name = name.replace(expert[0], ".experts.")
    shard = 0
    for part, (fused, index) in model.packed.items():
        if f".{part}." in name:
            name, shard = name.replace(f".{part}.", f".{fused}."), index
            break
    return name, (int(expert[1]), shard) if expert else shard


def load_weights(model: nn.Module, model_dir: Path,
                 progress: Callable[[LoadProgress], None] | None = None) -> None:
    files = checkpoint_files(model_dir)
    headers = {f: _headers(f) for f in files}
    total_bytes = sum(_tensor_bytes(h) for hs in headers.values() for h in hs.values())
    total_tensors = sum(len(hs) for hs in headers.values())
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    done = LoadProgress("load", 0, total_bytes, 0, total_tensors)
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name, header in headers[file].items():
                target, shard = _target(name, model)
                param = params.get(target)
                if param is not None:
                    param.weight_loader(param, f.get_slice(name), shard)
                    loaded.add(target)
                # A tied checkpoint may still store lm_head.weight: the embedding we hold.
                elif not name.endswith(_IGNORED_SUFFIXES) and name != "lm_head.weight":
                    raise ModelLoadError(f"{file.name}: unexpected tensor {name}; is this checkpoint "
                                         "really the architecture its config.json names?")
                done.bytes_done += _tensor_bytes(header)
                done.tensors_done += 1
                if progress:
                    progress(done)
    missing = sorted(n for n in set(params) - loaded if not getattr(params[n], "from_weight", False))
    if missing:
        raise ModelLoadError(f"{model_dir}: checkpoint lacks {len(missing)} tensor(s), e.g. "
                             f"{', '.join(missing[:3])}")

