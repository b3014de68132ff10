"""Checkpoint loading: every rank reads only the slices it keeps, straight into its
parameters.

A safetensors file is an 8-byte header length, a JSON header and the raw tensors. Each
tensor is handed to its parameter's `weight_loader(param, source, shard)` as a
`CheckpointTensor`: `source[a:b]` / `source[:, a:b]` read those rows / columns into a new
tensor, and `read_rows_into(dest, a, b)` reads rows a..b with one positional read into
`dest`'s own memory when dtypes match (no page faults through a mapping, no second copy).
Progress is reported in checkpoint bytes and tensors walked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mgpud.records import LoadProgress

from ..exceptions import ModelLoadError
from ..jsonfile import damaged, read_json

if TYPE_CHECKING:
    import torch
    from torch import nn

# Buffers some checkpoints carry that we compute ourselves; fp8 checkpoints' static
# activation scales, unused where activations stay in the model dtype.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".input_scale")
# safetensors dtype -> torch's name for it (torch itself is imported by the ranks only: the
# daemon checks checkpoints without it)
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "F8_E4M3": "float8_e4m3fn",
           "F8_E5M2": "float8_e5m2", "BOOL": "bool"}
_MAX_READ = 1 << 30  # bytes per read call: Linux moves at most ~2 GiB per call
_COLUMN_CHUNK = 64 << 20  # bytes of whole rows read at a time to cut columns out of


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
    begin, end = header["data_offsets"]
    return int(end) - int(begin)


def check_checkpoint(model_dir: Path) -> list[Path]:
    """The weight files, each checked whole (its header read, its size against it), so
    that a truncated download is named here rather than failing in a worker."""
    files = checkpoint_files(model_dir)
    for file in files:
        _headers(file)
    return files


def _headers(file: Path) -> tuple[dict[str, dict], int]:
    """A safetensors file's tensors, and where their data starts in the file."""
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
    return meta, 8 + length


class CheckpointTensor:
    """One tensor of an open checkpoint file, read on demand (see the module's doc)."""

    def __init__(self, fd: int, file: Path, name: str, header: dict, data_start: int):
        import torch

        if header["dtype"] not in _DTYPES:
            raise damaged(file, f"tensor {name} has dtype {header['dtype']}, which mgpud cannot read")
        self.name = name
        self.dtype: torch.dtype = getattr(torch, _DTYPES[header["dtype"]])
        self.shape = tuple(int(n) for n in header["shape"])
        begin, end = (int(n) for n in header["data_offsets"])
        self._fd = fd
        self._file = file
        self._offset = data_start + begin
        self._row_bytes = (end - begin) // self.shape[0] if self.shape and self.shape[0] else end - begin

    def get_shape(self) -> list[int]:  # as a safetensors slice says it
        return list(self.shape)

    def __getitem__(self, key: Any) -> torch.Tensor:
        """Rows are read, not mapped: only the first dimension's range leaves the file; any
        further index applies to those rows, read in chunks when it cuts columns."""
        import torch

        key = key if isinstance(key, tuple) else (key,)
        if not self.shape:
            return self.rows(0, 1)[key]
        first, rest = key[0], key[1:]
        if first is Ellipsis:
            first, rest = slice(None), key
        if isinstance(first, int):
            row = first + self.shape[0] if first < 0 else first
            return self.rows(row, row + 1)[(0, *rest)]
        start, stop, step = first.indices(self.shape[0])
        stop = max(start, stop)
        if not rest:
            return self.rows(start, stop)[::step]
        per = max(1, _COLUMN_CHUNK // max(1, self._row_bytes))
        parts = [self.rows(r, min(stop, r + per))[(slice(None, None, step), *rest)] for r in range(start, stop, per)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def rows(self, start: int, end: int) -> torch.Tensor:
        """Rows start..end as a new tensor of the checkpoint's dtype."""
        import torch

        out = torch.empty((end - start, *self.shape[1:]), dtype=self.dtype)
        self._read(out, start)
        return out if self.shape else out.reshape(())

    def read_rows_into(self, dest: torch.Tensor, start: int, end: int) -> None:
        """dest <- rows start..end: read straight into dest's memory when it is a
        contiguous CPU tensor of the checkpoint's dtype, else read and converted."""
        if dest.numel() * self.dtype.itemsize != (end - start) * self._row_bytes:
            raise ValueError(f"{self.name}: rows {start}..{end} do not fill a tensor of shape {tuple(dest.shape)}")
        if dest.device.type == "cpu" and dest.dtype == self.dtype and dest.is_contiguous():
            self._read(dest, start)
        else:
            dest.copy_(self.rows(start, end).view(dest.shape))

    def _read(self, dest: torch.Tensor, start: int) -> None:
        """Fill the contiguous CPU tensor dest from row `start` on, with positional reads."""
        import torch

        if dest.numel() == 0:
            return
        view = memoryview(dest.reshape(-1).view(torch.uint8).numpy())
        offset = self._offset + start * self._row_bytes
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:done + _MAX_READ]], offset + done)
            if n == 0:
                raise damaged(self._file, f"it ends inside tensor {self.name}")
            done += n


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
                 progress: Callable[[LoadProgress], None] | None = None, threads: int = 1) -> None:
    """Every checkpoint tensor into its parameter, `threads` tensors at a time: where a
    rank has several cores, filling fresh memory (the kernel zeroes each page on first
    touch) goes as fast as the cores do it, not one. Progress is reported from the
    calling thread only."""
    files = checkpoint_files(model_dir)
    headers = {f: _headers(f) for f in files}
    total_bytes = sum(_tensor_bytes(h) for hs, _ in headers.values() for h in hs.values())
    total_tensors = sum(len(hs) for hs, _ in headers.values())
    params = dict(model.named_parameters())
    jobs = _jobs(model, params, headers)  # every name checked before any byte is read
    loaded = {target for _, _, _, target, _ in jobs}
    # Tensors the model does not take (ignored buffers) count as walked from the start.
    done = LoadProgress("load", bytes_done=total_bytes - sum(_tensor_bytes(h) for _, _, h, _, _ in jobs),
                        bytes_total=total_bytes, tensors_done=total_tensors - len(jobs), tensors_total=total_tensors)
    with contextlib.ExitStack() as stack:
        fds = {f: os.open(f, os.O_RDONLY) for f in files}
        for fd in fds.values():
            stack.callback(os.close, fd)
        pool = stack.enter_context(ThreadPoolExecutor(max(1, threads), thread_name_prefix="mgpud-load"))
        stack.callback(pool.shutdown, cancel_futures=True)  # a failed tensor: the rest are not read
        running = {pool.submit(params[target].weight_loader, params[target],
                               CheckpointTensor(fds[f], f, name, h, headers[f][1]), shard): h
                   for f, name, h, target, shard in jobs}
        for future in as_completed(running):
            future.result()
            done.bytes_done += _tensor_bytes(running[future])
            done.tensors_done += 1
            if progress:
                progress(done)
    missing = sorted(n for n in set(params) - loaded if not getattr(params[n], "from_weight", False))
    if missing:
        raise ModelLoadError(f"{model_dir}: checkpoint lacks {len(missing)} tensor(s), e.g. "
                             f"{', '.join(missing[:3])}")


Job = tuple[Path, str, dict, str, Any]  # file, tensor name, its header, parameter, shard


def _jobs(model: nn.Module, params: dict[str, Any], headers: dict[Path, tuple[dict[str, dict], int]]) -> list[Job]:
    """The checkpoint's tensors this model loads; one it cannot place is refused."""
    jobs = []
    for file, (meta, _) in headers.items():
        for name, header in meta.items():
            target, shard = _target(name, model)
            if target in params:
                jobs.append((file, name, header, target, shard))
            # A tied checkpoint may still store lm_head.weight: the embedding we hold.
            elif not name.endswith(_IGNORED_SUFFIXES) and name != "lm_head.weight":
                raise ModelLoadError(f"{file.name}: unexpected tensor {name}; is this checkpoint "
                                     "really the architecture its config.json names?")
    return jobs
