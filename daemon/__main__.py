"""`python -m mgpud.daemon [--config FILE] [--runtime-dir DIR] ...`: the daemon in the
foreground, without the CLI (which offers the same as `mgpud serve`)."""

from __future__ import annotations

import argparse
import sys

from mgpud.units import parse_size

from .server import run_daemon
from .settings import LOG_LEVELS, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mgpud.daemon", description=__doc__)
    parser.add_argument("--config", help="TOML file (default: /etc/mgpud/mgpud.toml when it exists)")
    parser.add_argument("--runtime-dir", help="where the sockets go")
    parser.add_argument("--state-dir", help="where state.json goes")
    parser.add_argument("--devices", help="auto, cpu:N, or GPU ordinals such as 0,1")
    parser.add_argument("--device-memory", type=parse_size, help="bytes per CPU device, e.g. 4GiB")
    parser.add_argument("--log-level", choices=LOG_LEVELS)
    parser.add_argument("--shutdown-timeout", type=float, help="seconds running generations get on SIGTERM")
    parser.add_argument("--warm-workers", type=int, help="worker processes kept started for the next replica")
    parser.add_argument("--http", help="HOST:PORT of the OpenAI-compatible HTTP API (default 127.0.0.1:8000), or off")
    parser.add_argument("--api-key", help="HTTP clients must send it as a Bearer token (or $MGPUD_API_KEY)")
    args = vars(parser.parse_args(argv))
    try:
        config = load_config(args.pop("config"), args)
    except ConfigError as exc:
        print(f"mgpud: {exc}", file=sys.stderr)
        return 2
    return run_daemon(config)


if __name__ == "__main__":
    sys.exit(main())
