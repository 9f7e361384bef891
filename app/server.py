"""The HTTP server: uvicorn, with limits on what one client can make the web process hold.

uvicorn parses requests with httptools (llhttp), which has no limit on the size or number of request headers, and
uvicorn arms no timer while a request's headers arrive: a 10 MB header was answered, and connections sending a
byte every few seconds stayed open for good. `GuardedProtocol` adds the limits (`MEAL_MAX_HEADER_BYTES`,
`MEAL_MAX_HEADERS`, `MEAL_HEADER_TIMEOUT_S`); uvicorn's own settings do the rest (keep-alive, concurrency, which
proxies' forwarded headers to believe). `meal web` and the tests' live server both start it through `server_config`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.security import SECURITY_HEADERS
from app.store.settings import Settings

_SECURITY = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in SECURITY_HEADERS.items())


@dataclass(frozen=True)
class HeaderLimits:
    max_bytes: int  # request line and headers together
    max_count: int
    timeout_s: float  # from the connection's start (or the first byte of the next request) to the headers' end


def plain_answer(status: bytes, message: str) -> bytes:
    body = message.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\n" + _SECURITY + b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus: a request's head (request line and headers) over `max_bytes` gets a 431
    and the connection closes (the parser holds at most one read, 256 KiB, beyond the limit); more than
    `max_count` headers get a 431; a head not complete within `timeout_s` of the connection opening, or of its
    first byte on a kept-alive connection, closes the connection (slow and silent clients)."""

    limits = HeaderLimits(64 * 1024, 100, 10.0)  # replaced per server by guarded_protocol()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._reading_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()  # a client that connects and sends nothing is timed out too

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.timeout_s, self._head_timed_out)

    def _end_head(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            self.logger.info("closed a connection whose request headers took over %s s", self.limits.timeout_s)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            if self._head_timer is None:  # the first byte of the next request on a kept-alive connection
                self._arm_head_timer()
            self._head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._head_bytes > self.limits.max_bytes and not self.transport.is_closing():
            self._end_head()
            self.logger.warning("refused request headers over %d bytes", self.limits.max_bytes)
            self.transport.write(
                plain_answer(
                    b"431 Request Header Fields Too Large", f"request headers over {self.limits.max_bytes} bytes"
                )
            )
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._end_head()
        if len(self.headers) <= self.limits.max_count:
            super().on_headers_complete()
            return
        # uvicorn starts `self.app` for the request: answer it with the refusal instead.
        app, self.app = self.app, _too_many_headers(self.limits.max_count)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes = True, 0  # what comes next is the next request's head

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self.transport.write(plain_answer(b"400 Bad Request", msg))
        self.transport.close()


def _too_many_headers(limit: int) -> Any:
    body = f"more than {limit} request headers".encode()

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        headers += [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


def guarded_protocol(limits: HeaderLimits) -> type[GuardedProtocol]:
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


def server_config(app: Any, settings: Settings, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the panel: the header limits, keep-alive and concurrency from the settings, and
    forwarded headers (X-Forwarded-For, -Proto) believed only from the proxies `MEAL_FORWARDED_ALLOW_IPS` lists
    (uvicorn's default believes 127.0.0.1, where every embedded-mode client comes from)."""
    limits = HeaderLimits(settings.max_header_bytes, settings.max_headers, settings.header_timeout_s)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=list(settings.forwarded_allow_ips) or None,
        **options,
    )
