"""Byte sizes: parsed as operators write them ("4GiB", "512M", "1e9") for flags and config
files, and formatted for people. A leaf module: every layer (engine, daemon, cli, tui) uses it."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str | int) -> int:
    """Bytes in `text`: a plain number, or a number with a unit (K, M, G, T; KiB, MiB, GiB, TiB)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    match = _SIZE_RE.fullmatch(str(text))
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise ValueError(f"not a size: {text!r} (write e.g. 4GiB, 512MiB or 1000000000)")
    return int(float(match.group(1)) * unit)


_BINARY = ("B", "KiB", "MiB", "GiB", "TiB")


def fmt_bytes(n: float | None, compact: bool = False, missing: str = "-") -> str:
    """`n` bytes in binary units: "1.5 GiB", or compact for narrow columns ("1.5G", "340M");
    `missing` for an unknown figure (None)."""
    if n is None:
        return missing
    exp = min(len(_BINARY) - 1, max(0, int(abs(n)).bit_length() - 1) // 10)
    if not compact:
        return f"{n:.0f} B" if exp == 0 else f"{n / 1024 ** exp:.1f} {_BINARY[exp]}"
    value = n / 1024 ** exp
    if abs(value) >= 1000 and exp < len(_BINARY) - 1:  # 1000-1023 of a unit: show the next one
        exp, value = exp + 1, value / 1024
    if exp == 0:
        return f"{int(value)}B"
    return f"{value:.1f}{_BINARY[exp][0]}" if abs(value) < 10 else f"{value:.0f}{_BINARY[exp][0]}"
