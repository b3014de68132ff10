"""The daemon's configuration: a TOML file, with command-line flags on top.

```toml
runtime_dir = "/run/mgpud"          # sockets; default: see mgpud.ipc.paths
state_dir = "/var/lib/mgpud"        # state.json; default: $STATE_DIRECTORY, XDG state home
devices = "cpu:2"                   # "auto", "cpu:N", or GPU ordinals "0,1,2,3"; default: auto
device_memory = "4GiB"              # per CPU virtual device
log_level = "info"
shutdown_timeout = 30               # seconds in-flight generations get on SIGTERM
telemetry_interval = 0.5            # seconds between telemetry messages
warm_workers = 2                    # worker processes kept started (torch imported) for the next replica
http = "127.0.0.1:8000"             # the OpenAI-compatible HTTP API; "off" disables it
api_key = "..."                     # HTTP clients must send it as a Bearer token; or $MGPUD_API_KEY
model_roots = ["/srv/models"]       # loads only from these (and the demo and Hugging Face caches)

[engine]                            # defaults for every load (the load operation's names)
memory_utilization = 0.9
max_model_len = 4096

[[models]]                          # loaded at start (the load operation's arguments)
model = "demo"
name = "smol"
tp = 1
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib
from mgpud.ipc.schema import BadRequest, check_args

from mgpud.units import parse_size

DEFAULT_CONFIG = Path("/etc/mgpud/mgpud.toml")
DEFAULT_HTTP = ("127.0.0.1", 8000)
LOG_LEVELS = ("debug", "info", "warning", "error")
# The load arguments a config may default for every model.
ENGINE_DEFAULT_KEYS = ("max_model_len", "max_num_seqs", "max_num_batched_tokens",
                       "memory_utilization", "kv_cache_memory", "dtype")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


@dataclass
class DaemonConfig:
    runtime_dir: Path | None = None
    state_dir: Path | None = None
    devices: str | None = None
    device_memory: int | None = None  # bytes
    log_level: str = "info"
    shutdown_timeout: float = 30.0  # seconds
    telemetry_interval: float = 0.5  # seconds
    http: tuple[str, int] | None = DEFAULT_HTTP  # (host, port) of the HTTP API; None: off
    api_key: str | None = None  # what HTTP clients must send as a Bearer token
    model_roots: list[Path] = field(default_factory=list)  # none: any directory may be loaded
    warm_workers: int = 2  # processes kept imported and waiting: enough for a tp=2 or dp=2 start
    engine: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    # Where it came from, so that SIGHUP can read it again with the same flags on top.
    config_path: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


_SCALARS = {f.name for f in fields(DaemonConfig)} - {"engine", "models", "config_path", "overrides"}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> DaemonConfig:
    """Read `path` (default: /etc/mgpud/mgpud.toml when it exists), then apply `overrides`
    (flag values; None means "not given"). Raises ConfigError."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    file = Path(path) if path else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    raw = _read_toml(file) if file else {}
    unknown = set(raw) - _SCALARS - {"engine", "models"}
    unknown |= set(overrides) - _SCALARS
    if unknown:
        raise ConfigError(f"{file or 'flags'}: unknown setting(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(_SCALARS | {'engine', 'models'}))}")
    where = str(file or "flags")
    cfg = DaemonConfig(config_path=file, overrides=overrides)
    for key, value in {**raw, **overrides}.items():
        if key in _SCALARS:
            setattr(cfg, key, _scalar(where, key, value))
    if cfg.api_key is None and os.environ.get("MGPUD_API_KEY"):
        cfg.api_key = os.environ["MGPUD_API_KEY"]
    cfg.engine = _engine_defaults(where, raw.get("engine", {}))
    cfg.models = _models(where, raw.get("models", []))
    return cfg


def parse_listen(text: str) -> tuple[str, int] | None:
    """ "HOST:PORT" ("[::1]:8000" for IPv6), or "off" -> None. Raises ValueError."""
    if text.strip().lower() == "off":
        return None
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8000, 0.0.0.0:8000, [::1]:8000) or off")
    return host, int(port)


def state_dir(cfg: DaemonConfig) -> Path:
    """`state_dir`, else $STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/mgpud."""
    if cfg.state_dir:
        return cfg.state_dir
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "mgpud"


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None


def _scalar(where: str, key: str, value: Any) -> Any:
    try:
        return _convert(key, value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None


def _convert(key: str, value: Any) -> Any:
    if key in ("runtime_dir", "state_dir"):
        return Path(str(value))
    if key == "devices":
        return str(value)
    if key == "model_roots":
        return _roots(value)
    if key == "http":
        return parse_listen(str(value))
    if key == "api_key":
        if not str(value):
            raise ValueError("must not be empty (leave it out to accept every client)")
        return str(value)
    if key == "device_memory":
        return parse_size(value)
    if key == "log_level":
        if str(value).lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return str(value).lower()
    if key == "warm_workers":
        if isinstance(value, bool) or int(value) != value or int(value) < 0:
            raise ValueError(f"must be a whole number >= 0, got {value!r}")
        return int(value)
    return _positive(float(value))  # shutdown_timeout, telemetry_interval


def _roots(value: Any) -> list[Path]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | Path) for v in value):
        raise ValueError("must be a list of directories, e.g. [\"/srv/models\"]")
    roots = [Path(v).expanduser() for v in value]
    relative = [str(r) for r in roots if not r.is_absolute()]
    if relative:
        raise ValueError(f"{', '.join(relative)}: must be absolute paths")
    return roots


def _positive(value: float) -> Any:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _engine_defaults(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [engine] must be a table")
    unknown = set(raw) - set(ENGINE_DEFAULT_KEYS)
    if unknown:
        raise ConfigError(f"{where}: [engine]: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(ENGINE_DEFAULT_KEYS)}")
    checked = _load_args(f"{where}: [engine]", {"model": "-", **raw})
    return {k: checked[k] for k in raw}


def _models(where: str, raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise ConfigError(f"{where}: [[models]] must be an array of tables")
    return [_load_args(f"{where}: models[{i}]", entry) for i, entry in enumerate(raw)]


def _load_args(where: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Check a table as the load operation's arguments; sizes may be written "8GiB"."""
    try:
        if "kv_cache_memory" in entry:
            entry = {**entry, "kv_cache_memory": parse_size(entry["kv_cache_memory"])}
        return check_args("load", entry)
    except BadRequest as exc:
        raise ConfigError(f"{where}: {exc.message.removeprefix('load: ')}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: kv_cache_memory: {exc}") from None
