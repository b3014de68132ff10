"""`python -m mgpud.tui [--runtime-dir DIR]`: the dashboard without the CLI."""

from __future__ import annotations

import argparse
import sys

from .app import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m mgpud.tui", description=__doc__)
    parser.add_argument("--runtime-dir", help="the daemon's runtime directory (its sockets)")
    sys.exit(run(parser.parse_args().runtime_dir))
