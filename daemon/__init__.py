"""The mgpud daemon: `run_daemon(load_config(path, overrides))` serves until stopped."""

from .server import run_daemon
from .settings import ConfigError, DaemonConfig, load_config

__all__ = ["ConfigError", "DaemonConfig", "load_config", "run_daemon"]
