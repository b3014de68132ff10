"""Whom the daemon and its clients trust with the runtime directory and its sockets.

Whoever can write into the runtime directory can put a listener of their own in place of
control.sock, and clients would send it their requests. So the daemon refuses a
directory (runtime or state) that another user owns or may write into: group write only
for the daemon's own group (a unit may give its group /run/mgpud 0770), world write never.
Its last-resort directory, /tmp/mgpud-<uid>, sits in the world-writable /tmp where anyone
may have created it first: it must be the daemon's, 0700 and no symbolic link. Each client
checks the socket's owner before it connects (the rule is `check_socket`'s,
docs/protocol.md "Sockets" states it for other clients).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

DOC = "docs/protocol.md, Sockets"


class UnsafePath(Exception):
    """A directory or socket another user could control: what is wrong, and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def take_dir(path: Path, what: str, option: str, mode: int, private: bool = False) -> None:
    """Create the directory `path` (`what`, chosen with `option`) with `mode` unless it
    exists, then raise UnsafePath unless it is safe. `private`: created 0700, and it must be
    0700 and no symbolic link (a fixed name in a world-writable directory)."""
    try:
        path.mkdir(mode=0o700 if private else mode, parents=not private, exist_ok=True)
        st = os.lstat(path) if private else os.stat(path)
    except OSError as exc:
        raise UnsafePath(f"cannot create the {what} {path}: {exc.strerror}",
                         f"choose another with {option}") from None
    problem, fix = _dir_problem(path, st, private)
    if problem:
        raise UnsafePath(f"the {what} {path} {problem}", f"{fix}, or choose another with {option}")


def _dir_problem(path: Path, st: os.stat_result, private: bool) -> tuple[str, str]:
    """What makes the directory unsafe, and the command that fixes it; ("", "") when safe."""
    me, mode = os.geteuid(), stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link, which another user may have put there", f"remove it (`rm {path}`)"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory", f"remove it (`rm {path}`)"
    if st.st_uid != me:
        return (f"belongs to {_user_name(st.st_uid)}, not to {_user_name(me)} who runs mgpud: its owner could "
                "replace the files mgpud keeps there"), f"`chown {_user_name(me)} {path}`"
    if private and mode & 0o077:
        return f"has mode {mode:04o}; it must be 0700 (its name is one anyone could take)", f"`chmod 0700 {path}`"
    if mode & stat.S_IWOTH:
        return (f"is writable by every user (mode {mode:04o}): any of them could replace mgpud's "
                "sockets or files"), f"`chmod o-w {path}`"
    if mode & stat.S_IWGRP and st.st_gid != os.getegid():
        return (f"is writable by the group {_group_name(st.st_gid)} (mode {mode:04o}), not mgpud's own "
                f"group {_group_name(os.getegid())}"), f"`chmod g-w {path}`"
    return "", ""


def check_socket(path: Path) -> None:
    """Raise UnsafePath unless the socket file `path` belongs to root, to this user, or to the
    owner of its directory where root or this user set that directory up: its parent is
    theirs and nobody else may write to it (systemd's /run/mgpud, owned by mgpud, in /run)."""
    real = Path(os.path.realpath(path))
    owner = os.stat(real).st_uid
    if owner in (0, os.geteuid()) or (owner == os.stat(real.parent).st_uid and _set_up_by_trusted(real.parent)):
        return
    raise UnsafePath(
        f"the socket belongs to {_user_name(owner)}, whom this client does not trust: another user could "
        f"listen there in the daemon's place ({DOC})",
        f"remove it if it is not the daemon's (`rm {path}`), or run the client as {_user_name(owner)}")


def _set_up_by_trusted(directory: Path) -> bool:
    """Whether only root or this user could have created `directory` or handed it over."""
    parent = os.stat(directory.parent)
    return parent.st_uid in (0, os.geteuid()) and not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
