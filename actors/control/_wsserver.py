"""Accepting websocket connections so that no single connection can stop the listener.

trio-websocket's ``WebSocketServer`` runs each connection's handshake in a task of
``trio.serve_listeners`` and catches only its own protocol error. Anything else wsproto
raises while parsing a request (a ``Host`` header that fails IDNA decoding raises
``UnicodeError``) leaves that task, ends ``serve_listeners`` and with it the listener for
every client, before any authentication. Here every accepted stream runs inside a guard that
catches every ``Exception`` (groups included), counts it, and closes that stream only.

A handshake that can no longer complete (the peer closed, or wsproto refused the request and
trio-websocket closed the stream) stops waiting at once instead of holding its task until
the handshake deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, wrap_server_stream

__all__ = ["WebsocketListener"]

log = logging.getLogger("containerd_actors.gateway")

# The peer going away is not a failure of ours.
_PEER_GONE: tuple[type[BaseException], ...] = (
    ConnectionClosed,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


class _WatchedStream(trio.abc.Stream):
    """A stream that notes when it can yield no more data (EOF, an error, or closed)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ended = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.stream.receive_some(max_bytes)
        except BaseException:
            self.ended.set()
            raise
        if not data:
            self.ended.set()
        return data

    async def aclose(self) -> None:
        self.ended.set()
        await self.stream.aclose()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


class WebsocketListener:
    """Serves websocket handshakes on some listeners; ``handler`` gets each parsed request.

    Args:
        handler: called with each parsed handshake request; it accepts or rejects it and,
            after accepting, serves the connection and closes it.
        listeners: what to accept from (TCP, unix or TLS listeners).
        max_message_size: larger messages close the connection (1009).
        handshake_timeout: seconds a peer has to send a complete upgrade request.
        on_failed_handshake: called for each connection that ended without a parsed
            request (malformed, undecodable, timed out, or closed early).
        on_error: called for each unexpected failure after the request was parsed.
    """

    def __init__(
        self,
        handler: Callable[[WebSocketRequest], Awaitable[None]],
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        max_message_size: int,
        handshake_timeout: float,
        on_failed_handshake: Callable[[], None],
        on_error: Callable[[], None],
    ) -> None:
        self._handler = handler
        self._listeners = list(listeners)
        self._max_message_size = max_message_size
        self._handshake_timeout = handshake_timeout
        self._on_failed_handshake = on_failed_handshake
        self._on_error = on_error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept until cancelled; reports started once listening."""
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_listeners, self._connection, self._listeners))
            task_status.started()

    async def _connection(self, raw: trio.abc.Stream) -> None:
        # Nothing may escape: serve_listeners would stop accepting for everyone.
        stream = _WatchedStream(raw)
        request: WebSocketRequest | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(self._handshake_timeout):
                    request = await self._handshake(nursery, stream)
                if request is None:
                    self._on_failed_handshake()
                else:
                    await self._handler(request)
                nursery.cancel_scope.cancel()  # the websocket's reader task
        except Exception as exc:
            if request is None:
                self._on_failed_handshake()
                log.debug("handshake failed: %r", exc)
            elif not all(isinstance(leaf, _PEER_GONE) for leaf in _leaves(exc)):
                self._on_error()
                log.exception("connection failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _handshake(
        self, nursery: trio.Nursery, stream: _WatchedStream
    ) -> WebSocketRequest | None:
        """The parsed upgrade request, or None once the stream has ended without one."""
        request: WebSocketRequest | None = None
        async with trio.open_nursery() as race:

            async def parse() -> None:
                nonlocal request
                # The websocket's reader task runs in ``nursery``; if wsproto raises, it
                # cancels this wait and the error leaves ``nursery`` in the caller's guard.
                request = await wrap_server_stream(
                    nursery, stream, max_message_size=self._max_message_size
                )
                race.cancel_scope.cancel()

            race.start_soon(parse)
            await stream.ended.wait()
            race.cancel_scope.cancel()
        return request
