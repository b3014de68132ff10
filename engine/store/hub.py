"""Models by Hugging Face id: the local hub cache (read offline) and downloads into it.

The cache is the hub's own layout, shared with transformers and `huggingface-cli`:
`<cache>/models--ORG--NAME/snapshots/<revision>/`, the revision named by `refs/main`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..exceptions import ModelLoadError

# What serving needs from a repository: weights, configs, tokenizer; no other formats.
PULL_PATTERNS = ("*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class OfflineError(ModelLoadError):
    """A download was asked for where there is no way to the hub."""


def hub_cache() -> Path:
    """Where the hub cache is, as huggingface_hub finds it: $HF_HUB_CACHE, else
    $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub
    (read at each call: the environment of the process asking, not of its import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def is_repo_id(text: str) -> bool:
    """ORG/NAME, as the hub spells repository ids (a relative path may look the same:
    callers try the path first)."""
    return _REPO_ID.fullmatch(text) is not None and ".." not in text


def cached_snapshot(repo_id: str) -> Path:
    """The snapshot directory `refs/main` names for `repo_id`, without the network.
    Raises ModelLoadError naming where it looked and how to fetch the model."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        folder = cache / f"models--{repo_id.replace('/', '--')}"
        raise ModelLoadError(f"{repo_id} is not in the Hugging Face cache: no {folder}/snapshots/<refs/main> "
                             f"(HF_HUB_CACHE or HF_HOME set where it is); fetch it with `mgpud pull {repo_id}`, "
                             "or give the model's directory") from None


def pull(repo_id: str) -> Path:
    """Download `repo_id`'s weights, configs and tokenizer into the hub cache (a progress
    bar on stderr); the snapshot's directory. Raises OfflineError without a way to the hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise OfflineError(f"HF_HUB_OFFLINE is set, so {repo_id} cannot be downloaded; unset it, or copy the "
                           f"model into {hub_cache()} on a machine with network access")
    try:
        return Path(snapshot_download(repo_id, cache_dir=hub_cache(), allow_patterns=list(PULL_PATTERNS)))
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{repo_id}: no such model on the Hugging Face hub (or it is gated: "
                             "log in with `hf auth login`)") from None
    except (OfflineModeIsEnabled, OSError, HfHubHTTPError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__  # the hub's messages run on
        raise OfflineError(f"cannot download {repo_id}: the Hugging Face hub is unreachable ({why}); "
                           f"check the network, or copy the model into {hub_cache()}") from None
