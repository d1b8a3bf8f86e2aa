"""A tiny Trio HTTP/1.1 server for tests that need a misbehaving registry or token service.

One request per connection (``Connection: close``). The handler gets a :class:`Request` and
returns a :class:`Reply`; a reply body may be bytes or an async function that writes to the
stream itself (for endless or short bodies). Every request is recorded in ``server.requests``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import trio

StreamWriter = Callable[[trio.SocketStream], Awaitable[None]]


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | StreamWriter = b""


Handler = Callable[[Request], Reply]


@dataclass
class StubServer:
    host: str
    requests: list[Request] = field(default_factory=list)


_REASONS = {
    200: "OK",
    206: "Partial Content",
    307: "Temporary Redirect",
    401: "Unauthorized",
    404: "Not Found",
}


async def _read_request(stream: trio.SocketStream) -> Request | None:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data
        if len(buffer) > 1 << 20:
            return None
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = await stream.receive_some(65536)
        if not data:
            break
        rest += data
    return Request(method, target, headers, rest[:length])


@asynccontextmanager
async def http_stub(handler: Handler) -> AsyncIterator[StubServer]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    server = StubServer(host=f"127.0.0.1:{port}")

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                request = await _read_request(stream)
                if request is None:
                    return
                server.requests.append(request)
                reply = handler(request)
                headers = dict(reply.headers)
                headers.setdefault("Connection", "close")
                if isinstance(reply.body, bytes):
                    headers.setdefault("Content-Length", str(len(reply.body)))
                head = f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                await stream.send_all(head.encode("latin-1"))
                if isinstance(reply.body, bytes):
                    if request.method != "HEAD":
                        await stream.send_all(reply.body)
                else:
                    await reply.body(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
