"""A Trio client for the control plane (what the command line uses; usable from any program).

``async with connect_gateway(url, token) as gw`` opens the JSON-RPC connection; ``gw.call``
sends a request and returns its result or raises the matching error class from
``actors.errors``; ``gw.subscribe`` yields event messages; ``gw.attach`` opens a process's
stdio on a second websocket with the k8s channel framing.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from ..core._groups import collapse
from ..errors import (
    ContainerdActorsError,
    ContainerdError,
    ErrorClass,
    PermissionDenied,
    Unauthenticated,
    from_error_class,
)
from . import _frames as frames
from ._protocol import JSONRPC_SUBPROTOCOL

__all__ = ["GatewayClient", "GatewayError", "StdioSession", "connect_gateway"]

DEFAULT_URL: Final = "ws://127.0.0.1:7878"
RECEIVE_BUFFER: Final = 1 << 18
_decoder: Final = msgspec.json.Decoder()
_encoder: Final = msgspec.json.Encoder()


DEFAULT_TIMEOUT: Final = 10.0
# Events kept for a subscription id not registered yet (see GatewayClient._reader).
_EARLY_EVENTS: Final = 4096


class GatewayError(ContainerdActorsError):
    """A JSON-RPC error without a containerd error class (protocol or server errors).

    The text names what was wrong when the server said so in ``data`` (the field and the
    reason), e.g. ``Invalid params: env[0]: expected a KEY=VALUE entry (-32602)``.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message}{_detail(data)} ({code})")
        self.code = code
        self.data = data


def _detail(data: Any) -> str:
    if not isinstance(data, dict):
        return ""
    reason = data.get("reason")
    path = data.get("path")
    field = path.removeprefix("$.params").lstrip(".") if isinstance(path, str) else ""
    if isinstance(reason, str) and reason:
        return f": {field}: {reason}" if field else f": {reason}"
    if isinstance(data.get("method"), str):
        return f": {data['method']}"
    return ""


def _error_from(body: dict[str, Any]) -> Exception:
    code = int(body.get("code", -32603))
    message = str(body.get("message", "error"))
    data = body.get("data")
    if isinstance(data, dict) and isinstance(data.get("status"), str):
        try:
            error_class = ErrorClass(data["status"])
        except ValueError:
            return GatewayError(code, message, data)
        error: ContainerdError = from_error_class(error_class, message)
        error.local = bool(data.get("local", False))
        return error
    return GatewayError(code, message, data)


def _too_slow(url: str, timeout: float, what: str) -> GatewayError:
    return GatewayError(
        -32000,
        f"no {what} from the control plane at {url} within {timeout:g} s "
        "(is it a containerd-actors server, and does the URL's ws:// or wss:// match it?)",
    )


@contextlib.asynccontextmanager
async def _open(
    url: str,
    resource: str,
    token: str,
    subprotocols: list[str],
    connect_timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[WebSocketConnection]:
    # We own the byte stream and close it ourselves: when the server closes first,
    # trio-websocket's client leaves its stream open. Connecting and the handshake (TLS
    # and websocket) each get ``connect_timeout``: a listener that never answers must not hang us.
    headers = [(b"authorization", f"Bearer {token}".encode())]
    parts = urlsplit(url)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    with trio.move_on_after(connect_timeout) as connecting:
        if parts.scheme == "unix":
            stream = await trio.open_unix_socket(parts.path)
            host = "localhost"
        elif parts.scheme in ("ws", "wss"):
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (443 if parts.scheme == "wss" else 80)
            stream = await trio.open_tcp_stream(host, port)
            if parts.scheme == "wss":
                stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
        else:
            raise ValueError(f"gateway URL must be ws://, wss:// or unix://, not {url!r}")
    if connecting.cancelled_caught:
        raise _too_slow(url, connect_timeout, "connection")
    try:
        async with stream, trio.open_nursery() as nursery:
            with trio.move_on_after(connect_timeout) as handshake:
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    host,
                    resource,
                    subprotocols=subprotocols,
                    extra_headers=headers,
                    # Output comes in frames of up to 64 KiB: 4 KiB reads cost 16 wakeups each,
                    # and reads of several frames hand wsproto whole frames more often.
                    receive_buffer_size=RECEIVE_BUFFER,
                )
            if handshake.cancelled_caught:
                raise _too_slow(url, connect_timeout, "handshake answer")
            try:
                yield ws
            finally:
                with trio.move_on_after(5, shield=True):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _handshake_error(collapse(group)) from None
    except ConnectionRejected as exc:
        raise _handshake_error(exc) from None


def _handshake_error(exc: BaseException) -> BaseException:
    if not isinstance(exc, ConnectionRejected):
        return exc
    reason = (exc.body or b"").decode(errors="replace")[:200]
    message = f"the control plane refused the connection ({exc.status_code}): {reason}"
    if exc.status_code == 401:
        return Unauthenticated(message)
    if exc.status_code == 403:
        return PermissionDenied(message)
    return GatewayError(-32000, message)


class GatewayClient:
    """One JSON-RPC connection; requests may run concurrently."""

    def __init__(
        self, ws: WebSocketConnection, url: str, token: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._ws = ws
        self._url = url
        self._token = token
        self._timeout = timeout
        #: How many kept events the last ``subscribe`` with ``since`` replays first.
        self.replayed = 0
        self._early: dict[str, list[dict[str, Any]]] = {}
        self._early_total = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._subscriptions: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}
        # image.pull progress notifications, by the token the request carried.
        self._progress: dict[str, Callable[[dict[str, Any]], None]] = {}
        #: the server closed the connection (or it broke) while we were using it
        self.connection_lost = False

    async def _reader(self) -> None:
        try:
            while True:
                message = await self._ws.get_message()
                body = _decoder.decode(message)
                if "method" in body and body.get("method") == "event":
                    params = body.get("params", {})
                    name = params.get("subscription", "")
                    channel = self._subscriptions.get(name)
                    if channel is not None:
                        with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                            channel.send_nowait(params.get("event", {}))
                    elif self._early_total < _EARLY_EVENTS:
                        # Events may arrive before subscribe() has registered the id it was
                        # just given (the reply and the first events come back to back).
                        self._early.setdefault(name, []).append(params.get("event", {}))
                        self._early_total += 1
                    continue
                if "method" in body and body.get("method") == "image.progress":
                    params = body.get("params", {})
                    callback = self._progress.get(str(params.get("progress", "")))
                    if callback is not None:
                        callback(params.get("layer", {}))
                    continue
                request_id = body.get("id")
                waiter = (
                    self._pending.pop(request_id, None) if isinstance(request_id, int) else None
                )
                if waiter is not None:
                    waiter.send_nowait(body)
        except ConnectionClosed:
            self.connection_lost = True
        finally:
            for waiter in self._pending.values():
                waiter.close()
            for channel in self._subscriptions.values():
                channel.close()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; raises our error classes on failure."""
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[request_id] = send
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        try:
            await self._ws.send_message(_encoder.encode(message).decode())
            with receive:
                try:
                    body = await receive.receive()
                except trio.EndOfChannel:
                    raise GatewayError(-32000, "the gateway closed the connection") from None
        finally:
            self._pending.pop(request_id, None)
        if "error" in body:
            raise _error_from(body["error"])
        return body.get("result")

    async def call_with_progress(
        self, method: str, params: dict[str, Any], progress: Callable[[dict[str, Any]], None]
    ) -> Any:
        """``call`` with ``image.progress`` notifications for it passed to ``progress``."""
        token = f"p{secrets.token_hex(6)}"
        self._progress[token] = progress
        try:
            return await self.call(method, {**params, "progress": token})
        finally:
            self._progress.pop(token, None)

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        filters: dict[str, list[str]] | None = None,
        *,
        since: int | None = None,
        buffer: int = 1024,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        """Receive Docker-shaped event messages until the block ends.

        ``since`` (unix nanoseconds) first replays the matching events the server kept.
        """
        send, receive = trio.open_memory_channel[dict[str, Any]](buffer)
        params: dict[str, Any] = {}
        if filters:
            params["filters"] = filters
        if since is not None:
            params["since"] = since
        result = await self.call("events.subscribe", params)
        name = result["subscription"]
        self.replayed = int(result.get("replayed", 0))
        self._subscriptions[name] = send
        early = self._early.pop(name, [])
        self._early_total -= len(early)
        for event in early:
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(event)
        try:
            yield receive
        finally:
            self._subscriptions.pop(name, None)
            send.close()
            with contextlib.suppress(ContainerdActorsError, ConnectionClosed):
                await self.call("events.unsubscribe", {"subscription": name})

    @contextlib.asynccontextmanager
    async def attach(
        self,
        container_id: str,
        exec_id: str | None = None,
        *,
        replay: bool = False,
        ticket: dict[str, str] | None = None,
    ) -> AsyncIterator[StdioSession]:
        """Open the stdio websocket of a task (or of an exec with ``exec_id``).

        A task's output comes from its log: only what is written from now on, or with
        ``replay`` everything it wrote since it started. ``ticket`` is one the server already
        issued (``task.start`` with ``attach``: the output of that start on).
        """
        if ticket is None:
            params: dict[str, Any] = {"id": container_id}
            if exec_id:
                params["exec_id"] = exec_id
            if replay:
                params["replay"] = True
            ticket = await self.call("stdio.attach", params)
        async with _open(
            self._url,
            ticket["path"],
            self._token,
            list(frames.STDIO_SUBPROTOCOLS),
            self._timeout,
        ) as ws:
            yield StdioSession(ws)

    @contextlib.asynccontextmanager
    async def logs(self, container_id: str, **options: Any) -> AsyncIterator[StdioSession]:
        """Read a container's log (``follow``, ``tail``, ``since``/``until`` in ns,
        ``timestamps``, ``stdout``, ``stderr``); ``output()`` ends at its end."""
        ticket = await self.call("container.logs", {"id": container_id, **options})
        async with _open(
            self._url, ticket["path"], self._token, list(frames.STDIO_SUBPROTOCOLS)
        ) as ws:
            yield StdioSession(ws)


class StdioSession:
    """A process's stdio over k8s channel frames."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self.exit_code: int | None = None
        self.failure: str | None = None
        #: bytes the server reported dropped (lossy output mode), and the reports themselves
        self.dropped = 0
        self.drop_reports: list[str] = []

    @property
    def ended(self) -> bool:
        """True once the server sent its final status (False: the connection just dropped)."""
        return self.exit_code is not None or self.failure is not None

    async def send_stdin(self, data: bytes) -> None:
        await self._ws.send_message(frames.encode_frame(frames.Channel.STDIN, data))

    async def close_stdin(self) -> None:
        await self._ws.send_message(frames.close_frame(frames.Channel.STDIN))

    async def resize(self, width: int, height: int) -> None:
        await self._ws.send_message(frames.resize_frame(width, height))

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(channel, data) for stdout (1) and stderr (2) until the process ends.

        Sets ``exit_code`` (or ``failure``) from the final status on the error channel.
        """
        while (item := await self._next_output()) is not None:
            yield item[0], bytes(item[1])

    async def output_views(self) -> AsyncIterator[tuple[int, memoryview]]:
        """Like :meth:`output`, the data as a view into the message received (no copy: for
        whoever only writes it somewhere)."""
        while (item := await self._next_output()) is not None:
            yield item

    async def _next_output(self) -> tuple[int, memoryview] | None:
        # A plain coroutine both generators share (not one generator iterating the other,
        # which leaves the inner one to the garbage collector when the outer is abandoned).
        while True:
            try:
                message = await self._ws.get_message()
            except ConnectionClosed:
                return None
            if isinstance(message, str) or not message:
                continue
            channel = message[0]
            if channel == frames.Channel.ERROR:
                self._read_status(bytes(message[1:]))
                continue
            if channel in (frames.Channel.STDOUT, frames.Channel.STDERR):
                return channel, memoryview(message)[1:]

    def _read_status(self, payload: bytes) -> None:
        status = _decoder.decode(payload)
        if status.get("reason") == "OutputDropped":  # a marker in the stream, not the end
            for cause in status.get("details", {}).get("causes", []):
                if cause.get("reason") == "DroppedBytes":
                    self.dropped += int(cause.get("message", "0"))
            self.drop_reports.append(str(status.get("message", "output was dropped")))
            return
        if status.get("status") == "Success":
            self.exit_code = 0
            return
        causes = status.get("details", {}).get("causes", [])
        for cause in causes:
            if cause.get("reason") == "ExitCode":
                self.exit_code = int(cause.get("message", "1"))
                return
        self.failure = str(status.get("message", "stream failed"))


@contextlib.asynccontextmanager
async def connect_gateway(
    url: str, token: str, *, connect_timeout: float = DEFAULT_TIMEOUT
) -> AsyncIterator[GatewayClient]:
    """Connect to ``containerd-actors serve`` (``ws://host:port`` or ``unix:///path``).

    Connecting and the handshake each fail after ``connect_timeout`` seconds without an answer.
    """
    try:
        async with (
            _open(url, "/", token, [JSONRPC_SUBPROTOCOL], connect_timeout) as ws,
            trio.open_nursery() as nursery,
        ):
            if ws.subprotocol != JSONRPC_SUBPROTOCOL:
                raise GatewayError(-32600, f"server does not speak {JSONRPC_SUBPROTOCOL}")
            client = GatewayClient(ws, url, token, connect_timeout)
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise collapse(group) from None
