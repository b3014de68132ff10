"""The daemon's pieces that need no process: config, state file, sd_notify, systemd files."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mgpud.daemon.settings import ConfigError, load_config, state_dir
from mgpud.daemon.handlers import HANDLERS
from mgpud.daemon.manager import default_name
from mgpud.daemon.notify import Notifier, watchdog_interval
from mgpud.daemon.statefile import StateStore
from mgpud.ipc.errors import CODES
from mgpud.ipc.schema import OPS

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mgpud.toml"
    path.write_text(text)
    return path


def test_config_file_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, """
devices = "cpu:4"
device_memory = "2GiB"
shutdown_timeout = 12
[engine]
max_model_len = 1024
kv_cache_memory = "64MiB"
[[models]]
model = "demo"
name = "smol"
tp = 1
""")
    cfg = load_config(path, {"devices": "cpu:2", "log_level": None})
    assert (cfg.devices, cfg.device_memory, cfg.shutdown_timeout) == ("cpu:2", 2 << 30, 12.0)
    assert cfg.engine == {"max_model_len": 1024, "kv_cache_memory": 64 << 20}
    assert cfg.models[0]["name"] == "smol" and cfg.models[0]["tp"] == 1 and cfg.models[0]["dp"] == 0
    assert cfg.config_path == path and cfg.overrides == {"devices": "cpu:2"}


@pytest.mark.parametrize("text, fragment", [
    ("colour = 1", "unknown setting(s) colour"),
    ("shutdown_timeout = -3", "shutdown_timeout: must be positive"),
    ("log_level = 'loud'", "log_level: must be one of"),
    ("device_memory = 'lots'", "device_memory: not a size"),
    ("[engine]\nmax_model_len = 'long'", "[engine]: argument 'max_model_len' must be an integer"),
    ("[engine]\nbatch = 3", "[engine]: unknown key(s) batch"),
    ("[[models]]\nname = 'x'", "models[0]: argument 'model' is required"),
    ("[[models]]\nmodel = 'm'\ntp = 'x'", "models[0]: argument 'tp' must be an integer"),
    ("models = 3", "[[models]] must be an array of tables"),
    ("this is not toml", "not valid TOML"),
])
def test_config_errors_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_example_config_loads() -> None:
    cfg = load_config(ROOT / "systemd" / "mgpud.toml")
    assert cfg.models == [] and cfg.engine == {}
    assert cfg.model_roots == [Path("/srv/models")]


def test_model_roots_are_absolute_directories(tmp_path: Path) -> None:
    assert load_config(None, {"model_roots": ["/a", "/b"]}).model_roots == [Path("/a"), Path("/b")]
    assert load_config(None, {}).model_roots == []
    with pytest.raises(ConfigError, match="model_roots: models: must be absolute"):
        load_config(None, {"model_roots": ["models"]})
    with pytest.raises(ConfigError, match="model_roots: must be a list"):
        load_config(None, {"model_roots": "/srv/models"})


def test_state_dir_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/mgpud")
    assert state_dir(load_config(None, {})) == Path("/var/lib/mgpud")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    assert state_dir(load_config(None, {})) == Path("/home/u/.state/mgpud")
    assert state_dir(load_config(None, {"state_dir": "/srv/s"})) == Path("/srv/s")


def test_state_store_round_trip_and_bad_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "deep" / "dir")
    assert store.load() == []
    spec = {"model": "/m", "name": "m", "tp": 2, "dp": 1}
    store.save([spec])
    assert store.load()[0] | spec == store.load()[0]
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]  # no temporary left
    store.path.write_text("{half a file")
    assert store.load() == []
    store.path.write_text(json.dumps({"version": 1, "models": [spec, {"tp": "x"}, 7]}))
    assert [m["name"] for m in store.load()] == ["m"]


def test_notifier_sends_datagrams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n"))
    notifier = Notifier()
    notifier.ready("serving")
    notifier.extend_timeout(15)
    assert sock.recv(1024).decode().split("\n") == ["READY=1", "STATUS=serving", f"MAINPID={os.getpid()}"]
    assert sock.recv(1024) == b"EXTEND_TIMEOUT_USEC=15000000"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    Notifier().watchdog()  # systemd away: no exception


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


def test_every_operation_has_a_documented_handler() -> None:
    assert set(HANDLERS) == set(OPS)
    assert all(fn.__doc__ and fn.__doc__.startswith(op) for op, fn in HANDLERS.items())
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert all(f"### {op}\n" in doc for op in OPS)
    assert all(f"| `{code}`" in doc for code in CODES)


@pytest.mark.parametrize("model, name", [("demo", "demo"), ("/srv/models/Llama-3.1-8B/", "Llama-3.1-8B"),
                                         ("/x/my model!", "my-model-"), ("/", "model")])
def test_default_names(model: str, name: str) -> None:
    assert default_name(model) == name


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at this checkout's daemon
    unit = (ROOT / "systemd" / "mgpud.service").read_text()
    unit = unit.replace("/usr/local/bin/mgpud serve", f"{sys.executable} -m mgpud.daemon")
    (tmp_path / "mgpud.service").write_text(unit)
    run = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "mgpud.service")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "mgpud.service" not in run.stderr, run.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_exposure(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "mgpud.service").read_text()
    (tmp_path / "mgpud.service").write_text(unit.replace("/usr/local/bin/mgpud serve", "/bin/true"))
    run = subprocess.run(["systemd-analyze", "security", "--offline=true", "mgpud.service"],
                         cwd=tmp_path, capture_output=True, text=True, check=False)
    if "--offline" in run.stderr:
        pytest.skip(f"this systemd-analyze cannot judge a unit file offline: {run.stderr.strip()}")
    exposure = re.search(r"Overall exposure level for mgpud.service: ([0-9.]+)", run.stdout)
    assert exposure and float(exposure.group(1)) <= 3.0, run.stdout[-3000:] + run.stderr


@pytest.mark.skipif(not shutil.which("systemd-sysusers"), reason="systemd-sysusers is not installed")
def test_sysusers_file_parses() -> None:
    run = subprocess.run(["systemd-sysusers", "--dry-run", str(ROOT / "systemd" / "mgpud.sysusers")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
