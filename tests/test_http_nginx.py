"""Scaling out as docs/http.md describes it: two daemons behind a real nginx (`least_conn`,
no response buffering), driven by the official `openai` client through nginx only."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from checkpoints import make_tiny_checkpoint
from mgpud.daemon.testing import DaemonProcess
from waiting import wait_for

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                       if os.access(p, os.X_OK)), None)
LONG = 2000  # tokens: a generation that outlasts the test's disconnect
CHAT = [{"role": "user", "content": "Say something."}]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(NGINX is None, reason="no nginx binary (apt-get install nginx)")]

CONFIG = """\
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$request $status upstream=$upstream_addr';
    access_log {dir}/access.log upstream;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream mgpud {{
        least_conn;
        {servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mgpud;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DaemonProcess]]:
    model = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama", max_positions=4096)
    with DaemonProcess(devices="cpu:1", http="127.0.0.1:0") as a, \
            DaemonProcess(devices="cpu:1", http="127.0.0.1:0") as b:
        for d in (a, b):
            d.call("load", model=str(model), name="tiny", tp=1, dp=1, max_model_len=LONG + 64,
                   kv_cache_memory=8 << 20)
        yield [a, b]


@pytest.fixture(scope="module")
def nginx(daemons: list[DaemonProcess], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx in the foreground on a free port, everything it writes under one directory;
    yields its base URL."""
    assert NGINX is not None
    root = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    servers = " ".join(f"server {d.http_url.removeprefix('http://')};" for d in daemons)
    # As root, nginx's workers would run as `nobody`, who cannot enter pytest's 0700 directories.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(CONFIG.format(user=user, dir=root, servers=servers, port=port))
    # Before reading the config nginx may complain that it cannot open its built-in error
    # log (not root); it goes on with the one configured here.
    proc = subprocess.Popen([NGINX, "-p", str(root), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        assert proc.poll() is None, f"nginx exited with {proc.returncode}:\n{_read(root / 'error.log')}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_for(answering, "nginx to answer /health", detail=lambda: _read(root / "error.log"))
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _stats(daemon: DaemonProcess) -> dict[str, Any]:
    return daemon.call("models")["models"][0]["stats"]


def test_concurrent_chats_through_nginx_reach_both_daemons(daemons: list[DaemonProcess], nginx: str) -> None:
    before = [_stats(d)["requests_finished"] for d in daemons]

    async def ask_all() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=nginx + "/v1", api_key="none", max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*(client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=24,
                temperature=0, extra_body={"ignore_eos": True}) for i in range(8)))

    replies = asyncio.run(ask_all())
    assert len(replies) == 8
    for reply in replies:
        assert reply.choices[0].message.content and reply.usage.completion_tokens == 24
    served = [_stats(d)["requests_finished"] - b for d, b in zip(daemons, before)]
    assert sum(served) == 8 and min(served) >= 1, served


def test_streaming_through_nginx_is_not_buffered(daemons: list[DaemonProcess], nginx: str) -> None:
    client = openai.OpenAI(base_url=nginx + "/v1", api_key="none", max_retries=0, timeout=120)
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"

    # The first chunk comes through while the generation still runs (nginx holds nothing
    # back), and closing the stream at nginx cancels the generation in its daemon.
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=LONG, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    wait_for(lambda: sum(_stats(d)["running"] for d in daemons) == 1, "the generation to run")
    stream.close()
    wait_for(lambda: all(_stats(d)["running"] == 0 and _stats(d)["kv_blocks_used"] == 0 for d in daemons),
             "the generation to be cancelled behind nginx", 30, detail=lambda: [_stats(d) for d in daemons])
