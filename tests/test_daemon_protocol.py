"""A real daemon (no model loaded) answering well-formed and malformed requests."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from mgpud.daemon.testing import DaemonProcess
from mgpud.ipc import AsyncClient, RemoteError, framing, paths
from mgpud.ipc.schema import OPS


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with DaemonProcess() as d:
        yield d


def dealer(d: DaemonProcess, sock_type: int = zmq.DEALER) -> zmq.Socket:
    sock = zmq.Context.instance().socket(sock_type)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(paths.endpoint(d.runtime_dir / "control.sock"))
    return sock


def recv(sock: zmq.Socket, timeout: float = 10.0) -> dict:
    assert sock.poll(timeout * 1000), "no reply"
    return framing.parse_reply(sock.recv_multipart()[-1])


def malformed_messages(rng: random.Random, count: int) -> Iterator[tuple[list[bytes], object]]:
    """(frames, the id the error reply must carry) for `count` broken requests of every kind."""
    def pack(obj: object) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    wrong_values = [True, -1, 2**40, 1.5, float("inf"), "x" * 5000, "", [], [1, "a"], {"a": 1},
                    b"\x00\xff", [[[]]], {"role": 1}]
    kinds = ["random", "non_map", "bad_id", "bad_version", "bad_op", "unknown_op", "bad_args",
             "wrong_arg", "unknown_arg", "missing_arg", "multi_frame", "ext", "deep"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        rid = f"m{i}"
        if kind == "random":
            yield [rng.randbytes(rng.randrange(0, 300))], "any"
        elif kind == "non_map":
            yield [pack(rng.choice([1, "ping", [1, 2], None, b"bin", 3.5]))], None
        elif kind == "bad_id":
            yield [pack({"v": 1, "id": rng.choice([None, [1], {"a": 1}, 1.5, "", "x" * 500]), "op": "ping"})], None
        elif kind == "bad_version":
            yield [pack({"v": rng.choice([0, 2, "1", None, [1], True, 1.0]), "id": rid, "op": "ping"})], rid
        elif kind == "bad_op":
            yield [pack({"v": 1, "id": rid, "op": rng.choice([None, 1, ["ping"], {"op": 1}])})], rid
        elif kind == "unknown_op":
            yield [pack({"v": 1, "id": rid, "op": rng.choice(["", "PING", "load ", "__init__", "x" * 999])})], rid
        elif kind == "bad_args":
            yield [pack({"v": 1, "id": rid, "op": "status", "args": rng.choice([[], "a", 1, b"b"])})], rid
        elif kind in ("wrong_arg", "missing_arg", "unknown_arg"):
            required = kind == "missing_arg"  # leaving out optional arguments is no error
            op = rng.choice([o for o, spec in OPS.items()
                             if spec.args and (not required or any(a.required for a in spec.args.values()))])
            args = {name: rng.choice(wrong_values) for name in OPS[op].args if rng.random() < 0.5}
            # one value no argument kind accepts, so that no message gets past validation
            args[rng.choice(list(OPS[op].args))] = rng.choice([{"a": 1}, [[[]]], b"\x00\xff"])
            if kind == "missing_arg":
                args = {}
            if kind == "unknown_arg":
                args[rng.choice(["zzz", "Model", 7])] = 1
            yield [pack({"v": 1, "id": rid, "op": op, "args": args})], rid
        elif kind == "multi_frame":
            yield [pack({"v": 1, "id": rid, "op": "ping"}), pack({"v": 1, "id": rid, "op": "ping"})], None
        elif kind == "ext":
            yield [pack({"v": 1, "id": rid, "op": "ping", "args": {"x": msgpack.ExtType(5, b"zz")}})], rid
        else:  # arguments nested deeper than msgpack's packer goes: written by hand
            head = pack({"v": 1, "id": rid, "op": "generate", "args": {"model": "m", "prompt": None}})
            depth = rng.choice([300, 5000])  # past msgpack's stack limit the id is unreadable
            yield [head[:-1] + b"\x91" * depth + b"\x01"], rid if depth < 1000 else None


def flood(d: DaemonProcess, count: int, seed: int = 0) -> int:
    """Send `count` malformed messages; check each error reply; return how many came."""
    sock = dealer(d)
    try:
        expected = []
        for frames, rid in malformed_messages(random.Random(seed), count):
            sock.send_multipart(frames)
            expected.append(rid)
        replies = 0
        while replies < count:
            # Each error reply comes, however slowly a loaded machine answers a thousand.
            assert sock.poll(60_000), f"no reply after {replies} of {count}"
            msg = framing.parse_reply(sock.recv())
            assert msg["type"] == "error" and msg["error"]["code"] == "bad_request", msg
            assert msg["error"]["message"]
            rid = expected[replies]
            assert rid == "any" or msg["id"] == rid, (rid, msg)
            replies += 1
        return replies
    finally:
        sock.close()


def test_model_less_operations(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        assert c.call("ping")["pong"] is True
        assert c.call("version")["protocol"] == framing.PROTOCOL_VERSION
        status = c.call("status")
        assert status["state"] == "running" and status["models"] == []
        assert status["control_socket"] == str(daemon.runtime_dir / "control.sock")
        assert status["devices"] == {"total": 2, "free": 2, "kinds": ["cpu"]}
        devices = c.call("devices")["devices"]
        assert [dev["id"] for dev in devices] == ["cpu:0", "cpu:1"]
        assert devices[0]["memory"]["free"] > 0 and devices[0]["model"] is None
        assert c.call("models") == {"models": [], "generations": []}
        metrics = c.call("metrics")
        assert metrics["daemon"]["requests_total"]["ping"] >= 1


def test_every_malformed_message_gets_an_error_and_the_daemon_keeps_serving(daemon: DaemonProcess) -> None:
    before = daemon.call("metrics")["daemon"]
    assert flood(daemon, 1000) == 1000
    with daemon.client() as c:
        assert c.call("status")["state"] == "running"
        after = c.call("metrics")["daemon"]
    malformed = after["malformed_total"] - before["malformed_total"]
    assert malformed >= 900  # the rest are argument errors of valid ops
    # Every error reply counts by its code, those refused at the door (malformed) too.
    assert after["errors_total"]["bad_request"] - before["errors_total"].get("bad_request", 0) == 1000
    assert after["errors_total"].get("internal", 0) == 0


def test_oversized_message_is_dropped(daemon: DaemonProcess) -> None:
    big = dealer(daemon)
    try:
        big.send(framing.request("big", "generate", {"model": "m", "prompt": "x" * (framing.MAX_REQUEST_BYTES + 10)}))
        assert not big.poll(500)  # the daemon cut the connection rather than read it
    finally:
        big.close()
    assert daemon.call("ping")["pong"]


def test_req_sockets_work_too(daemon: DaemonProcess) -> None:
    sock = dealer(daemon, zmq.REQ)
    try:
        sock.send(framing.request("r", "ping", {}))
        assert framing.reply_payload(recv(sock))["pong"]
        sock.send(b"garbage")
        assert recv(sock)["error"]["code"] == "bad_request"
    finally:
        sock.close()


def test_multi_frame_request_is_refused(daemon: DaemonProcess) -> None:
    sock = dealer(daemon)
    try:
        sock.send_multipart([b"a", framing.request("r", "ping", {})])
        msg = recv(sock)
        assert msg["error"]["code"] == "bad_request" and "single frame" in msg["error"]["message"]
    finally:
        sock.close()


def test_model_errors_without_models(daemon: DaemonProcess, tiny_llama: Path) -> None:
    with daemon.client() as c:
        for op, args in [("generate", {"model": "nope", "prompt": "hi"}), ("unload", {"name": "nope"}),
                         ("reconfigure", {"name": "nope", "tp": 2})]:
            with pytest.raises(RemoteError) as info:
                c.call(op, **args)
            assert info.value.code == "not_found" and "nope" in str(info.value)
        # The model's own problems come first: a missing directory, heads a tp cannot split.
        cases = [("/nonexistent", {"tp": 3, "dp": 1}, "load_failed", "/nonexistent does not exist"),
                 ("/nonexistent", {}, "load_failed", "/nonexistent does not exist"),
                 (tiny_llama, {"tp": 3, "dp": 1}, "load_failed", "tp=3 does not divide this model's 4 attention"),
                 (tiny_llama, {"tp": 2, "dp": 2}, "busy", "needs 4 devices; 2 of 2 are free"),
                 (tiny_llama, {"tp": 1, "dp": 1, "devices": ["cpu:9"]}, "bad_request", "unknown device 'cpu:9'"),
                 (tiny_llama, {"tp": 2, "dp": 1, "devices": ["cpu:0"]}, "bad_request", "needs 2 devices; 1 named")]
        for model, args, code, text in cases:
            with pytest.raises(RemoteError) as info:
                c.call("load", model=str(model), **args)
            assert info.value.code == code and text in str(info.value), args
        assert c.call("cancel", id=12345) == {"cancelled": False, "requests": []}
        assert c.call("models") == {"models": [], "generations": []}


def test_load_failure_is_reported_and_listed(daemon: DaemonProcess, tiny_llama: Path) -> None:
    with daemon.client(timeout=30) as c:
        with pytest.raises(RemoteError) as info:  # found as the engine starts: no room for one sequence
            c.call("load", model=str(tiny_llama), name="broken", tp=1, dp=1, kv_cache_memory=1)
        assert info.value.code == "load_failed" and "KV cache" in str(info.value)
        [model] = c.call("models")["models"]
        assert (model["name"], model["state"]) == ("broken", "failed") and model["error"]
        assert c.call("unload", name="broken") == {"name": "broken", "unloaded": True}
        assert c.call("models") == {"models": [], "generations": []}


def test_plan_uses_the_daemons_devices(daemon: DaemonProcess) -> None:
    result = daemon.call("plan", model="Llama-3.1-8B", dtype="bf16")
    assert result["devices"] == "cpu:2" and result["shapes"]
    with pytest.raises(RemoteError) as info:
        daemon.call("plan", model="/no/such/model")
    assert info.value.code == "bad_request"


def test_telemetry_twice_a_second(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        events = c.events(("telemetry",))
        first, second = next(events), next(events)
        events.close()
    assert first["topic"] == second["topic"] == "telemetry"
    assert set(first["data"]) == {"daemon", "devices", "models"}
    # It keeps coming (`next` waits up to the client's 10 s timeout), paced by the daemon:
    # never closer than the configured half second. How late a loaded machine sends the
    # next one is not judged here.
    assert second["time"] - first["time"] >= 0.45


def test_async_client_concurrent_calls(daemon: DaemonProcess) -> None:
    async def main() -> list[dict]:
        async with AsyncClient(daemon.runtime_dir) as c:
            return await asyncio.gather(*(c.call("ping") for _ in range(50)), c.call("status"))

    results = asyncio.run(main())
    assert all(r["pong"] for r in results[:50]) and results[50]["state"] == "running"
