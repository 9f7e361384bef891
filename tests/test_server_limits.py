"""What one client can make the web server hold, probed on a real `meal web` process over raw sockets: oversized and
too many request headers, slow and silent clients; and whom the login limiter believes a client is."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import ensure_user, free_port, wait_healthy
from live_server import live_server

from app.store.migrate import upgrade
from app.store.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
HEADER_TIMEOUT_S = 3.0  # the test server's MEAL_HEADER_TIMEOUT_S (10 s by default)
ADMIN_PASSWORD = "the admin's real password"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    """`meal web` as a process of its own (this checkout's code), embedded mode, a short header timeout."""
    data = tmp_path_factory.mktemp("web")
    settings = Settings(data_dir=data)
    upgrade(settings.database_url)
    ensure_user(settings, "admin", "admin", password=ADMIN_PASSWORD)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEAL_")}
    env.update(
        MEAL_DATA_DIR=str(data),
        MEAL_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        MEAL_KEEP_ALIVE_S="2",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    log = data / "web.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "meal_core.cli", "web", "--no-migrate", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, lambda: process.poll() is None, lambda: log.read_text()[-3000:])
        yield base, settings
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b"" if it closed without a word)."""
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_oversized_request_head_is_refused(web: tuple[str, Settings]) -> None:
    base, settings = web
    # Before: a 10 MB header was answered 200, and the server held all of it.
    with connect(base) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        with contextlib.suppress(OSError):  # the server may close before it has all of it
            for _ in range(10 * 16):
                sock.sendall(b"x" * 65536)
            sock.sendall(b"\r\n\r\n")
        reply = answer(sock)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert b"200 OK" not in reply
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(settings.max_headers + 1))
    with connect(base) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n")
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 431") and b"x-content-type-options: nosniff" in reply.lower(), reply[:300]
    # A large but reasonable head still passes: 40 kB of cookies and 50 headers.
    headers = {f"x-h{i}": "v" for i in range(50)} | {"cookie": "c=" + "x" * 40_000}
    assert httpx.get(f"{base}/healthz", headers=headers).status_code == 200


def test_slow_and_silent_clients_are_disconnected(web: tuple[str, Settings]) -> None:
    """Slowloris: connections that send a byte every half second, never finishing their headers, connections
    that send nothing, and a kept-alive connection whose next request trickles in; all are closed once the header
    timeout is up (before: all still open after 60 s), and the server answers others meanwhile."""
    base, _ = web
    slow = [connect(base) for _ in range(8)]
    silent = [connect(base) for _ in range(3)]
    kept = connect(base)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    trickling = [*slow, kept]
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 10_000
    open_ = {id(s): s for s in [*trickling, *silent]}
    started, sent = time.monotonic(), 0
    for sock in open_.values():
        sock.setblocking(False)
    while open_ and time.monotonic() - started < 60:  # a generous bound: the timeout is HEADER_TIMEOUT_S
        for sock in list(open_.values()):
            try:
                if sock in trickling:
                    sock.send(head[sent : sent + 1])
                if sock.recv(65536) == b"":
                    del open_[id(sock)]
            except BlockingIOError:
                pass
            except OSError:  # reset or broken pipe: closed by the server
                del open_[id(sock)]
        sent += 1
        time.sleep(0.5)
    still_open = len(open_)
    assert httpx.get(f"{base}/healthz").status_code == 200
    for sock in [*trickling, *silent]:
        sock.close()
    assert still_open == 0, f"{still_open} of 12 connections still open after 60 s"
    assert sent * 0.5 >= HEADER_TIMEOUT_S * 0.5  # closed by the timeout, not at once


def test_forwarded_for_from_an_unlisted_proxy_is_not_believed(web: tuple[str, Settings]) -> None:
    """Before: uvicorn believed X-Forwarded-For from 127.0.0.1, and 30 wrong passwords with a different one each got
    30 × 401 and never a 429."""
    base, settings = web
    ensure_user(settings, "eve-target", "trainer", password="a password of hers")
    codes = [
        httpx.post(
            f"{base}/api/auth/login",
            json={"name": "eve-target", "password": f"guess number {i}"},
            headers={"X-Forwarded-For": f"10.0.{i}.1"},
        ).status_code
        for i in range(30)
    ]
    assert codes[0] == 401 and codes.count(429) >= 20, codes


def test_forwarded_for_from_a_listed_proxy_is_believed_and_the_name_is_still_limited(
    embedded_settings: Settings,
) -> None:
    """Behind a configured proxy every client has its own address: guesses at one name from 30 addresses still
    end in 429 (the per-name count), and a client at another address logging in as someone else is not held up."""
    settings = embedded_settings.model_copy(update={"forwarded_allow_ips": ["127.0.0.1"]})
    ensure_user(settings, "target", "trainer", password="a password of hers")
    ensure_user(settings, "other", "trainer", password="another password")
    with live_server(settings) as base:
        codes = [
            httpx.post(
                f"{base}/api/auth/login",
                json={"name": "target", "password": f"guess number {i}"},
                headers={"X-Forwarded-For": f"10.0.{i}.1"},
            ).status_code
            for i in range(30)
        ]
        assert codes[:5] == [401] * 5 and 429 in codes, codes
        other = httpx.post(
            f"{base}/api/auth/login",
            json={"name": "other", "password": "another password"},
            headers={"X-Forwarded-For": "10.0.0.1"},
        )
        assert other.status_code == 200
