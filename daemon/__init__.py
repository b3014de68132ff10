"""The mgpud daemon: `run_daemon(load_config(path, overrides))` serves until stopped."""

from .config import ConfigError, DaemonConfig, load_config
from .server import run_daemon

__all__ = ["ConfigError", "DaemonConfig", "load_config", "run_daemon"]
