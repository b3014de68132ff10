"""From what a user names (`demo`, a directory, ORG/NAME) to a model directory, within the
model roots when they are set; and the models on disk that could be named."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import ModelLoadError
from .demo import DEMO_NAME, cache_dir
from .hub import cached_snapshot, hub_cache, is_repo_id


class OutsideRoots(ModelLoadError):
    """A model directory outside the model roots the daemon was given."""


@dataclass
class OnDisk:
    """A model directory found on disk, named as `load` takes it."""

    ref: str  # demo, ORG/NAME, or the directory
    source: str  # mgpud (its cache), hf (the hub cache), root (a model root)
    path: Path
    size_bytes: int
    architecture: str | None


def all_roots(roots: list[Path]) -> list[Path]:
    """The configured roots and the two caches that always count as roots, symlinks resolved."""
    return [r.expanduser().resolve() for r in [*roots, cache_dir(), hub_cache()]]


def locate(ref: str, roots: list[Path]) -> str:
    """The directory (or `demo`) that `ref` names. A path that exists wins over a hub id of
    the same spelling; with `roots`, a path outside them is refused. Blocking (it reads the
    disk). Raises ModelLoadError."""
    if ref == DEMO_NAME:
        return ref
    path = Path(ref).expanduser()
    if not path.exists() and not path.is_absolute() and is_repo_id(ref):
        return str(cached_snapshot(ref))
    real = path.resolve()
    allowed = all_roots(roots)
    if roots and not any(real.is_relative_to(root) for root in allowed):
        raise OutsideRoots(f"{ref} ({real}) is outside the model roots ({', '.join(map(str, allowed))}); "
                           "move the model under one of them, or add its directory to model_roots in "
                           "mgpud.toml (or serve --model-root)")
    return str(real)


def on_disk(roots: list[Path]) -> list[OnDisk]:
    """Every model directory in the mgpud cache, the hub cache and the model roots."""
    found = [_entry(DEMO_NAME, "mgpud", d) for d in _model_dirs(cache_dir() / "models", 1)]
    found += [_entry(ref, "hf", path) for ref, path in _hub_snapshots()]
    seen = {f.path.resolve() for f in found}
    for root in roots:
        for d in _model_dirs(root.expanduser(), 2):
            if d.resolve() not in seen:
                seen.add(d.resolve())
                found.append(_entry(str(d), "root", d))
    return found


def _model_dirs(root: Path, depth: int) -> list[Path]:
    """`root` itself when it holds a config.json, else its subdirectories that do, `depth` deep."""
    if (root / "config.json").is_file():
        return [root]
    if depth == 0 or not root.is_dir():
        return []
    return [d for child in sorted(root.iterdir()) if child.is_dir() and not child.name.startswith(".")
            for d in _model_dirs(child, depth - 1)]


def _hub_snapshots() -> list[tuple[str, Path]]:
    """(ORG/NAME, the snapshot `load` would use) for each model repository in the hub cache."""
    cache = hub_cache()
    found = []
    for repo in sorted(cache.glob("models--*--*")) if cache.is_dir() else []:
        repo_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        try:
            snapshot = cached_snapshot(repo_id)
        except ModelLoadError:  # a partial download: nothing `load` could use
            continue
        if (snapshot / "config.json").is_file():
            found.append((repo_id, snapshot))
    return found


def _entry(ref: str, source: str, path: Path) -> OnDisk:
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())  # stat follows the hub's links
    return OnDisk(ref, source, path, size, _architecture(path))


def _architecture(path: Path) -> str | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    names = config.get("architectures") or [config.get("model_type")]
    return names[0] if names and names[0] else None
