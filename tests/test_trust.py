"""Who the daemon and its clients trust: the runtime and state directories, the socket's owner."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mgpud.daemon.server import Daemon
from mgpud.daemon.settings import DaemonConfig
from mgpud.ipc import Client, DaemonUnavailable, paths
from mgpud.ipc.client import probe_socket
from mgpud.ipc.trust import UnsafePath, take_dir

OTHER = "mgpud-test-other"


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    """A second user, created for these tests and removed after them."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("a second user needs root and useradd")
    try:
        made = False
        pwd.getpwnam(OTHER)
    except KeyError:
        run = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER],
                             capture_output=True, text=True, check=False)
        if run.returncode:
            pytest.skip(f"useradd {OTHER} failed: {run.stderr.strip()}")
        made = True
    yield pwd.getpwnam(OTHER)
    if made:
        subprocess.run(["userdel", OTHER], capture_output=True, check=False)


def directory(path: Path, mode: int) -> Path:
    path.mkdir()
    path.chmod(mode)
    return path


def take(path: Path, private: bool = False) -> None:
    take_dir(path, "runtime directory", "--runtime-dir", 0o770, private)


def test_world_writable_directory_is_refused(tmp_path: Path) -> None:
    run = directory(tmp_path / "run", 0o777)
    with pytest.raises(UnsafePath, match=r"writable by every user \(mode 0777\).*`chmod o-w .*--runtime-dir"):
        take(run)
    run.chmod(0o1777)  # the sticky bit keeps others from renaming files, not from adding theirs
    with pytest.raises(UnsafePath, match="writable by every user"):
        take(run)


def test_group_write_only_for_the_daemons_own_group(tmp_path: Path, other_user: pwd.struct_passwd) -> None:
    run = directory(tmp_path / "run", 0o770)
    take(run)  # as the systemd unit sets up /run/mgpud for the group mgpud
    os.chown(run, -1, other_user.pw_gid)
    with pytest.raises(UnsafePath, match=f"writable by the group {OTHER} .*not mgpud's own group"):
        take(run)
    run.chmod(0o750)
    take(run)


def test_directory_of_another_user_is_refused(tmp_path: Path, other_user: pwd.struct_passwd) -> None:
    run = directory(tmp_path / "run", 0o700)
    os.chown(run, other_user.pw_uid, -1)
    me = pwd.getpwuid(os.geteuid()).pw_name
    with pytest.raises(UnsafePath, match=f"belongs to {OTHER}, not to {me} .*`chown {me} {run}`"):
        take(run)


def test_missing_directories_are_created(tmp_path: Path) -> None:
    take(tmp_path / "a" / "run")
    take_dir(tmp_path / "state", "state directory", "--state-dir", 0o700)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_private_fallback_is_0700_and_no_symlink(tmp_path: Path) -> None:
    fallback = tmp_path / "mgpud-0"
    take(fallback, private=True)
    assert fallback.stat().st_mode & 0o777 == 0o700
    fallback.chmod(0o750)
    with pytest.raises(UnsafePath, match="has mode 0750; it must be 0700"):
        take(fallback, private=True)
    link = tmp_path / "link"
    link.symlink_to(fallback)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        take(link, private=True)


def test_daemon_takes_the_fallback_privately(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MGPUD_RUNTIME_DIR", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(paths, "fallback_dir", lambda: tmp_path / "mgpud-uid")
    daemon = Daemon(DaemonConfig(state_dir=tmp_path / "state"))
    assert daemon.runtime_dir == tmp_path / "mgpud-uid"
    daemon._take_dirs()
    assert daemon.runtime_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("which", ["--runtime-dir", "--state-dir"])
def test_serve_refuses_a_world_writable_directory(tmp_path: Path, which: str) -> None:
    dirs = {"--runtime-dir": tmp_path / "run", "--state-dir": tmp_path / "state"}
    directory(dirs[which], 0o777)
    flags = [str(x) for pair in dirs.items() for x in pair]
    run = subprocess.run([sys.executable, "-m", "mgpud.daemon", *flags, "--devices", "cpu:1", "--http", "off"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1, run.stderr
    assert f"{dirs[which]} is writable by every user (mode 0777)" in run.stderr
    assert f"or choose another with {which}" in run.stderr


def listening(path: Path, owner: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    os.chown(path, owner, -1)
    return sock


def test_client_refuses_a_socket_of_another_user(tmp_path: Path, other_user: pwd.struct_passwd) -> None:
    run = directory(tmp_path / "run", 0o755)
    with (listening(run / "control.sock", other_user.pw_uid), pytest.raises(DaemonUnavailable) as info,
          Client(run, timeout=1) as client):
        client.call("ping")
    message = str(info.value)
    assert f"the socket belongs to {OTHER}, whom this client does not trust" in message
    assert f"`rm {run / 'control.sock'}`" in message


def test_client_trusts_the_owner_of_a_directory_root_set_up(tmp_path: Path, other_user: pwd.struct_passwd) -> None:
    # systemd's layout: /run (root, 0755) / mgpud (User=, 0770) / control.sock (User=)
    for parent_mode, trusted in [(0o755, True), (0o1777, False)]:  # /run, then a /tmp
        run = directory(tmp_path / f"{parent_mode:o}", parent_mode) / "mgpud"
        run.mkdir(0o770)
        os.chown(run, other_user.pw_uid, other_user.pw_gid)
        with listening(run / "control.sock", other_user.pw_uid):
            if trusted:
                probe_socket(run / "control.sock")
            else:
                with pytest.raises(DaemonUnavailable, match="does not trust"):
                    probe_socket(run / "control.sock")
