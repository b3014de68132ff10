"""The OpenAI-compatible HTTP API, driven by the official `openai` client against a real
daemon on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from checkpoints import make_tiny_checkpoint
from oracle import hf_logprobs
from mgpud.daemon.testing import DaemonProcess
from waiting import wait_for

KEY = "sk-test-key"
LONG = 2000  # tokens: a generation that outlasts the test's disconnect
CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama", max_positions=4096)


@pytest.fixture(scope="module")
def daemon(model: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess("--api-key", KEY, http="127.0.0.1:0") as d:
        d.call("load", model=str(model), name="tiny", dtype="float32", max_model_len=LONG + 64, kv_cache_memory=8 << 20)
        yield d


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.http_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _figures(daemon: DaemonProcess) -> dict[str, Any]:
    return daemon.call("models")["models"][0]["stats"]


def _idle(daemon: DaemonProcess) -> bool:
    stats = _figures(daemon)
    return stats["running"] == 0 and stats["kv_blocks_used"] == 0


def test_models_lists_the_loaded_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_ten_concurrent_chats_are_all_answered(daemon: DaemonProcess) -> None:
    async def ask_all() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=daemon.http_url + "/v1", api_key=KEY, max_retries=0) as aclient:
            return await asyncio.gather(*(aclient.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=6,
                temperature=0) for i in range(10)))

    replies = asyncio.run(ask_all())
    assert len(replies) == 10
    for reply in replies:
        assert reply.choices[0].message.content and reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 6


def test_greedy_chat_equals_the_control_socket_generate(daemon: DaemonProcess, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    direct = daemon.call("generate", model="tiny", messages=CHAT, max_tokens=12, stream=False)
    assert reply.choices[0].message.content == direct["text"]
    assert reply.usage.prompt_tokens == direct["usage"]["prompt_tokens"]


def test_streaming_with_usage_and_several_choices(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=7, temperature=0, n=2,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    texts = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    finals = [c for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert sorted(c.index for c in finals) == [0, 1] and {c.finish_reason for c in finals} == {"length"}
    assert texts[0] == texts[1] != ""  # greedy: both choices alike
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 14


def test_completions_with_several_prompts_and_echo(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt=["Hello", "World"], max_tokens=4, temperature=0,
                                      echo=True)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text.startswith("Hello") and reply.choices[1].text.startswith("World")
    assert reply.usage.completion_tokens == 8


def test_echo_with_logprobs_equals_transformers(model: Path, client: openai.OpenAI) -> None:
    prompt = [5, 17, 42, 99, 7, 300, 12, 64]
    reply = client.completions.create(model="tiny", prompt=prompt, max_tokens=1, temperature=0, echo=True,
                                      logprobs=2)
    got = reply.choices[0].logprobs
    ref = hf_logprobs(model, prompt)
    assert got.token_logprobs[0] is None and got.top_logprobs[0] is None  # nothing comes before it
    assert len(got.tokens) == len(got.token_logprobs) == len(prompt) + 1
    for i in range(1, len(prompt)):
        assert got.token_logprobs[i] == pytest.approx(ref[i - 1, prompt[i]].item(), abs=1e-4)
        assert max(got.top_logprobs[i].values()) == pytest.approx(ref[i - 1].max().item(), abs=1e-4)
    assert got.token_logprobs[-1] == pytest.approx(ref[-1].max().item(), abs=1e-4)  # greedy: the best
    assert got.text_offset == sorted(got.text_offset)


def test_chat_logprobs_follow_the_sampled_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy picks the likeliest
        assert entry.logprob <= 0


def test_stop_string_ends_with_stop(client: openai.OpenAI) -> None:
    free = client.completions.create(model="tiny", prompt="Once", max_tokens=12, temperature=0).choices[0].text
    cut = client.completions.create(model="tiny", prompt="Once", max_tokens=12, temperature=0,
                                    stop=[free[3:5]]).choices[0]
    assert cut.finish_reason == "stop" and free.startswith(cut.text) and len(cut.text) < len(free)


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    def ask() -> str:
        return client.completions.create(model="tiny", prompt="Once", max_tokens=10, temperature=1.5,
                                         seed=11).choices[0].text

    assert ask() == ask()


def test_error_shapes(daemon: DaemonProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="absent", messages=CHAT)
    assert missing.value.body["param"] == "model" and "absent" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model="tiny", messages=CHAT, temperature=500)
    assert hot.value.body["param"] == "temperature" and hot.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as shapeless:
        client.chat.completions.create(model="tiny", messages="hello")  # type: ignore[arg-type]
    assert shapeless.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="max_model_len"):
        client.completions.create(model="tiny", prompt=[5] * (LONG + 100))
    stranger = openai.OpenAI(base_url=daemon.http_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.models.list()
    assert refused.value.body["code"] == "invalid_api_key"


def test_health_needs_no_key(daemon: DaemonProcess) -> None:
    with urllib.request.urlopen(daemon.http_url + "/health", timeout=10) as answer:
        assert answer.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(daemon.http_url + "/v1/models", timeout=10)
    assert refused.value.code == 401 and json.load(refused.value)["error"]["code"] == "invalid_api_key"


def test_a_closed_stream_cancels_its_generation(daemon: DaemonProcess, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=LONG, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    wait_for(lambda: _figures(daemon)["running"] == 1, "the generation to run")
    stream.close()
    wait_for(lambda: _idle(daemon), "the sequence to be cancelled and its KV freed", 10,
             detail=lambda: _figures(daemon))


def test_a_vanished_client_cancels_its_blocking_request(daemon: DaemonProcess) -> None:
    body = json.dumps({"model": "tiny", "prompt": "Once", "max_tokens": LONG, "ignore_eos": True}).encode()
    host, port = daemon.http_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_for(lambda: _figures(daemon)["running"] == 1, "the generation to run")
    wait_for(lambda: _idle(daemon), "the sequence to be cancelled and its KV freed", 10,
             detail=lambda: _figures(daemon))


def test_status_names_the_http_address(daemon: DaemonProcess) -> None:
    assert daemon.call("status")["http"] == daemon.http_url and daemon.http_url.startswith("http://127.0.0.1:")


def test_a_taken_port_stops_the_start(daemon: DaemonProcess) -> None:
    taken = daemon.http_url.removeprefix("http://")
    with pytest.raises(RuntimeError, match=f"cannot listen on {taken} for HTTP"):
        DaemonProcess(http=taken).start()


def test_off_serves_no_http(tmp_path: Path) -> None:
    with DaemonProcess() as d:
        assert d.call("status")["http"] is None
