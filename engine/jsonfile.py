"""Reading a model's JSON files so that a damaged one is named, with what to do about it
(json's own "Expecting value: line 2 column 1 (char 84)" names neither)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .exceptions import ModelLoadError


def read_json(path: Path) -> Any:
    """path's JSON; ModelLoadError naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise damaged(path, f"it is not valid JSON: {exc}") from None


def damaged(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path} is damaged or incomplete ({why}); download the model again")
