"""The protocol's pieces that need no daemon: framing, argument validation, paths, sizes."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
from mgpud.ipc import framing, paths
from mgpud.ipc.errors import ProtocolError, RemoteError
from mgpud.ipc.schema import CHECKS, OPS, BadRequest, check_args, parse_request
from mgpud.units import parse_size


def raw(**msg: object) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def test_request_round_trip_fills_defaults() -> None:
    req = parse_request(framing.request(7, "load", {"model": "demo"}))
    assert (req.id, req.op) == (7, "load")
    assert req.args["tp"] == 0 and req.args["dp"] == 0 and req.args["wait"] is True
    assert req.args["name"] is None


@pytest.mark.parametrize("data, fragment", [
    (b"\xc1", "not a msgpack object"),
    (b"", "not a msgpack object"),
    (raw(v=1, id=1, op="ping") + b"x", "not a msgpack object"),
    (msgpack.packb([1, 2]), "must be a msgpack map"),
    (raw(v=1, op="ping"), "'id' must be"),
    (raw(v=1, id=[1], op="ping"), "'id' must be"),
    (raw(v=1, id="x" * 200, op="ping"), "'id' must be"),
    (raw(v=1, id=True, op="ping"), "'id' must be"),
])
def test_unaddressable_requests(data: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment) as info:
        parse_request(data)
    assert info.value.req_id is None and info.value.code == "bad_request"


@pytest.mark.parametrize("msg, fragment", [
    ({"v": 2, "op": "ping"}, "protocol version 2 is not supported"),
    # true and 1.0 equal 1 in Python; the version is an integer all the same
    ({"v": True, "op": "ping"}, "protocol version True is not supported"),
    ({"v": 1.0, "op": "ping"}, "protocol version 1.0 is not supported"),
    ({"op": "ping"}, "protocol version None is not supported"),
    ({"v": 1}, "'op' must be a string"),
    ({"v": 1, "op": "ping", "args": [1]}, "'args' must be a map"),
    ({"v": 1, "op": "fly"}, "unknown operation 'fly'"),
    ({"v": 1, "op": "ping", "args": {"x": 1}}, "unknown argument 'x'"),
    ({"v": 1, "op": "unload", "args": {}}, "argument 'name' is required"),
    ({"v": 1, "op": "unload", "args": {"name": "../etc"}}, "'name' must be a name"),
    ({"v": 1, "op": "load", "args": {"model": "m", "tp": "2"}}, "'tp' must be an integer"),
    ({"v": 1, "op": "load", "args": {"model": "m", "tp": True}}, "'tp' must be an integer"),
    ({"v": 1, "op": "load", "args": {"model": "m", "tp": -1}}, "'tp' must be >= 0"),
    ({"v": 1, "op": "load", "args": {"model": "m", "memory_utilization": 0.0}}, "must be > 0.0"),
    ({"v": 1, "op": "load", "args": {"model": "m", "memory_utilization": 1.5}}, "must be <= 1.0"),
    ({"v": 1, "op": "load", "args": {"model": "m", "dtype": "int4"}}, "must be one of"),
    ({"v": 1, "op": "generate", "args": {"model": "m"}}, "exactly one of prompt or messages"),
    ({"v": 1, "op": "generate", "args": {"model": "m", "prompt": "a", "messages": [
        {"role": "user", "content": "b"}]}}, "exactly one of"),
    ({"v": 1, "op": "generate", "args": {"model": "m", "prompt": []}}, "'prompt' must be"),
    ({"v": 1, "op": "generate", "args": {"model": "m", "prompt": [1, -2]}}, "'prompt' must be"),
    ({"v": 1, "op": "generate", "args": {"model": "m", "messages": [{"role": "user"}]}}, "'messages' must be"),
    ({"v": 1, "op": "generate", "args": {"model": "m", "prompt": "a", "temperature": float("nan")}},
     "'temperature' must be a number"),
    ({"v": 1, "op": "generate", "args": {"model": "m", "prompt": "a", "stop": ["a", 1]}}, "'stop' must be"),
    # an empty stop string would end every generation at its first token
    ({"v": 1, "op": "generate", "args": {"model": "m", "prompt": "a", "stop": [""]}}, "non-empty strings"),
    ({"v": 1, "op": "reconfigure", "args": {"name": "m"}}, "at least one of tp, dp"),
    ({"v": 1, "op": "cancel", "args": {"id": 1.5}}, "'id' must be"),
    ({"v": 1, "op": "cancel", "args": {}}, "exactly one of id or request or model or all"),
    ({"v": 1, "op": "cancel", "args": {"id": 1, "all": True}}, "exactly one of"),
    ({"v": 1, "op": "generate", "args": {"model": "m", "prompt": [1, True]}}, "'prompt' must be"),
    ({"v": 1, "op": "generate", "args": {"model": "m", "prompt": [1] * 40000 + [1 << 31]}}, "'prompt' must be"),
])
def test_addressable_bad_requests(msg: dict, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment) as info:
        parse_request(raw(id="r1", **msg))
    assert info.value.req_id == "r1"


@pytest.mark.parametrize("v", [True, 1.0, "1", None])
def test_replies_of_another_version_are_refused(v: object) -> None:
    with pytest.raises(ProtocolError, match="daemon speaks protocol"):
        framing.parse_reply(raw(v=v, id=1, type="result", result={}))


def test_null_arguments_mean_absent() -> None:
    args = check_args("generate", {"model": "m", "prompt": [1, 2], "seed": None})
    assert args["seed"] is None and args["stream"] is True


def test_every_operation_is_described() -> None:
    for name, op in OPS.items():
        assert op.summary, name
        assert all(spec.kind in CHECKS for spec in op.args.values()), name


def test_replies_parse_and_errors_raise() -> None:
    assert framing.reply_payload(framing.parse_reply(framing.ok(3, {"a": 1}))) == {"a": 1}
    msg = framing.parse_reply(framing.frame("x", {"text": "hi"}))
    assert msg["type"] == "frame" and framing.reply_payload(msg) == {"text": "hi"}
    with pytest.raises(RemoteError) as info:
        framing.reply_payload(framing.parse_reply(framing.error(3, "not_found", "no model")))
    assert (info.value.code, str(info.value)) == ("not_found", "no model")


def test_events_parse() -> None:
    frames = framing.event("telemetry", {"x": 1}, 12.5)
    assert frames[0] == b"telemetry"
    assert framing.parse_event(frames) == {"v": 1, "topic": "telemetry", "time": 12.5, "data": {"x": 1}}


def test_runtime_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("MGPUD_RUNTIME_DIR", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert paths.runtime_dir() == paths.fallback_dir() == Path(f"/tmp/mgpud-{os.getuid()}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "gone"))  # kept through `su`, say
    assert paths.runtime_dir() == paths.fallback_dir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert paths.runtime_dir() == tmp_path / "mgpud"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/mgpud:/run/other")
    assert str(paths.runtime_dir()) == "/run/mgpud"
    monkeypatch.setenv("MGPUD_RUNTIME_DIR", "/srv/m")
    assert str(paths.runtime_dir()) == "/srv/m"
    assert str(paths.runtime_dir("/x")) == "/x"
    assert paths.endpoint(paths.control_path(paths.runtime_dir("/x"))) == "ipc:///x/control.sock"


@pytest.mark.parametrize("text, value", [("4GiB", 4 << 30), ("512MiB", 512 << 20), ("1.5G", 1_500_000_000),
                                         ("1000", 1000), (42, 42), ("2 kib", 2048)])
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "GiB", "4 parsecs", "-1", True, -5])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)  # type: ignore[arg-type]


def test_ipc_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, mgpud.ipc; sys.exit('torch' in sys.modules or 'mgpud.engine' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
