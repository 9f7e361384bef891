"""A real HTTP server for tests (uvicorn in a background thread) and a server-sent-events client for it."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from app.main import create_app
from app.server import server_config
from app.store.settings import Settings


@contextmanager
def live_server(settings: Settings, port: int = 0) -> Iterator[str]:
    """Serve create_app(settings) on 127.0.0.1 (a free port unless `port` is given); yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    # The limits and proxy settings `meal web` runs with (app/server.py).
    config = server_config(
        create_app(settings),
        settings,
        "127.0.0.1",
        port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@dataclass
class Event:
    id: str | None
    name: str
    data: Any


class EventStream:
    """Reads `GET url` as text/event-stream in a background thread; parsed events wait in a queue.

    The connection closes when the test leaves the `with` block (or, at the latest, when the server stops).
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> None:
        self.url, self.headers, self.params = url, headers or {}, params or {}
        self.events: queue.Queue[Event | BaseException] = queue.Queue()
        self.received: list[Event] = []
        self.status_code: int | None = None
        self._connected = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=None))
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, name="sse-reader", daemon=True)

    def __enter__(self) -> EventStream:
        self._thread.start()
        if not self._connected.wait(15):
            raise TimeoutError(f"no response from {self.url}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Hang up: shutting the socket down wakes the reader thread, which is blocked reading it."""
        if self._response is not None:
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        self._client.close()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", self.url, headers=self.headers, params=self.params) as response:
                self._response, self.status_code = response, response.status_code
                self._connected.set()
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if not line:  # a blank line ends an event
                        if "data" in fields:
                            event = Event(fields.get("id"), fields.get("event", "message"), json.loads(fields["data"]))
                            self.events.put(event)
                        fields = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
        except BaseException as error:  # closed by the test, or a real failure: the test sees it in next()
            self._connected.set()
            self.events.put(error)

    def next(self, timeout: float = 30.0) -> Event:
        """The next event; fails after `timeout` seconds without one."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s; received so far: {self.received}") from None
        if isinstance(item, BaseException):
            raise AssertionError(f"event stream ended: {item!r}; received so far: {self.received}")
        self.received.append(item)
        return item

    def until(self, predicate: Callable[[Event], bool], timeout: float = 60.0) -> list[Event]:
        """Events up to and including the first one that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        seen: list[Event] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout} s; received: {seen}")
            event = self.next(left)
            seen.append(event)
            if predicate(event):
                return seen

    def drain(self, quiet: float) -> list[Event]:
        """Whatever arrives until nothing has come for `quiet` seconds."""
        seen: list[Event] = []
        while True:
            try:
                item = self.events.get(timeout=quiet)
            except queue.Empty:
                return seen
            if isinstance(item, BaseException):
                return seen
            self.received.append(item)
            seen.append(item)
