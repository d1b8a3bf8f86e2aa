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

Connections that have not yet sent a complete request (so are not authenticated) are
bounded, in total and per peer address: when a new one arrives and its bound is reached, the
OLDEST pending connection (of that peer, else of all) is closed, never the new one. Half-open
handshakes therefore cannot hold more than ``max_pending`` descriptors, and a real client,
which sends its request within a round trip, still gets in while a flood goes on: refusing
new connections instead would lock it out. :func:`raise_fd_limit` lifts the soft
``RLIMIT_NOFILE`` to the hard limit (Python, unlike Go, does not), so these bounds and the
authenticated-connection cap leave a reserve for containerd channels and stdio FIFOs.
"""

from __future__ import annotations

import collections
import logging
import resource
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, wrap_server_stream

__all__ = ["WebsocketListener", "raise_fd_limit"]

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


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit from %d", soft)
    return soft


def _peer(stream: trio.abc.Stream) -> object:
    """The peer's address without the port (unix sockets: all one peer)."""
    inner: Any = stream
    while not isinstance(inner, trio.SocketStream):
        inner = getattr(inner, "transport_stream", None)
        if inner is None:
            return ""
    try:
        name = inner.socket.getpeername()
    except OSError:
        return ""
    return name[0] if isinstance(name, tuple) else ""


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
            request (malformed, undecodable, timed out, closed early, or evicted).
        max_pending: connections without a complete request, in total.
        max_pending_per_peer: the same, per peer address.
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
        max_pending: int = 64,
        max_pending_per_peer: int = 32,
    ) -> None:
        self._handler = handler
        self._listeners = list(listeners)
        self._max_message_size = max_message_size
        self._handshake_timeout = handshake_timeout
        self._on_failed_handshake = on_failed_handshake
        self._on_error = on_error
        self._max_pending = max_pending
        self._max_pending_per_peer = max_pending_per_peer
        # Oldest first: connection serial -> (peer, the scope bounding its handshake).
        self._pending: collections.OrderedDict[int, tuple[object, trio.CancelScope]] = (
            collections.OrderedDict()
        )
        self._pending_of: collections.Counter[object] = collections.Counter()
        self._serial = 0

    def _admit(self, peer: object, scope: trio.CancelScope) -> int:
        """Register a pending handshake, evicting the oldest one over a bound."""
        if self._pending_of[peer] >= self._max_pending_per_peer:
            oldest = next(k for k, (p, _) in self._pending.items() if p == peer)
            self._evict(oldest)
        if len(self._pending) >= self._max_pending:
            self._evict(next(iter(self._pending)))
        self._serial += 1
        self._pending[self._serial] = (peer, scope)
        self._pending_of[peer] += 1
        return self._serial

    def _evict(self, serial: int) -> None:
        self._release(serial)[1].cancel()

    def _release(self, serial: int) -> tuple[object, trio.CancelScope]:
        entry = self._pending.pop(serial, None)
        if entry is None:
            return "", trio.CancelScope()
        self._pending_of[entry[0]] -= 1
        if not self._pending_of[entry[0]]:
            del self._pending_of[entry[0]]
        return entry

    @property
    def pending(self) -> int:
        """Connections still in their handshake."""
        return len(self._pending)

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
                scope = trio.CancelScope(deadline=trio.current_time() + self._handshake_timeout)
                serial = self._admit(_peer(raw), scope)
                try:
                    with scope:
                        request = await self._handshake(nursery, stream)
                finally:
                    self._release(serial)
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
