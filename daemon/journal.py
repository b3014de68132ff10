"""The daemon's log lines: on a terminal stamped with the time; under systemd each line
carries its journald priority (sd-daemon(3): "<3>" error, "<4>" warning, "<6>" info,
"<7>" debug), so that `journalctl -u mgpud -p warning` shows the failures. journald
stamps lines itself.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(levelname)s %(name)s: %(message)s"
# logging's levels -> syslog priorities, highest level first
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7


class JournalFormatter(logging.Formatter):
    """Every line of a record (a traceback's too) with the record's priority: journald
    reads each line as an entry of its own."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def priority(levelno: int) -> int:
    return next((p for level, p in PRIORITIES if levelno >= level), DEBUG_PRIORITY)


def under_journald() -> bool:
    """Whether stderr is the stream journald reads: JOURNAL_STREAM names its device and
    inode, and a child that inherited the variable but not the stream must not count."""
    try:
        device, inode = (int(part) for part in os.environ.get("JOURNAL_STREAM", "").split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(JournalFormatter(FORMAT) if under_journald() else logging.Formatter(f"%(asctime)s {FORMAT}"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
