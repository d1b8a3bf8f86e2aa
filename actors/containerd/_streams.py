"""Streaming RPCs seen from Trio: server streams and lock-step bidirectional streams.

Both ride on :meth:`AsyncioBridge.open_stream`, so the grpclib stream lives in one asyncio task
that is entered, iterated and closed there, and the asyncio side never waits on Trio: it waits
on the bridge's pull future, which Trio completes.

A :class:`Duplex` is a client or bidirectional stream whose server answers every request with
exactly one response (containerd's Content.Write). Trio puts one request in a one-slot box and
pulls; the loop takes the request, sends it, receives the answer and yields it. Exactly one
request is in flight, so the buffers are bounded by one message each way. The last request is
sent with ``end=True``; the duplex then reads the stream to its end (containerd repeats its
last response after the client ends) and reports the call's final status.

Cancellation: a cancelled :meth:`Duplex.exchange` leaves the duplex broken (the request may or
may not have reached the server); leaving the ``async with`` cancels the asyncio task, which
resets the gRPC stream.

Errors are ours (``actors.errors``), never grpclib's, and each stream counts as one RPC; a
stream that fails counts one failure.
"""

from __future__ import annotations

import collections
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from ..errors import ClientClosed, Internal, from_grpc_exception

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from ._bridge import BridgedStream

__all__ = ["Duplex", "RequestSlot", "ResponseStream", "duplex_messages"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _mapped(exc: BaseException, name: str, failures: collections.Counter[str]) -> BaseException:
    """Our exception for what a bridged stream raised (``exc`` itself when not a gRPC error)."""
    if isinstance(exc, trio.ClosedResourceError):
        failures[name] += 1
        error: BaseException = ClientClosed(f"{name}: the client is closed")
    elif isinstance(exc, trio.BrokenResourceError):
        failures[name] += 1
        error = Internal(f"{name}: the stream failed earlier")
    else:
        mapped = from_grpc_exception(exc, method=name)
        if mapped is None:
            return exc
        failures[name] += 1
        error = mapped
    error.__cause__ = exc
    return error


class ResponseStream(Generic[Resp]):
    """Responses of a server-streaming RPC, one at a time, with errors mapped to ours."""

    def __init__(
        self, stream: BridgedStream[Resp], name: str, failures: collections.Counter[str]
    ) -> None:
        self._stream = stream
        self._name = name
        self._failures = failures

    async def receive(self) -> Resp:
        """Return the next response; raise :exc:`trio.EndOfChannel` when the stream ends."""
        try:
            return await self._stream.receive()
        except (trio.EndOfChannel, trio.Cancelled):
            raise
        except BaseException as exc:
            error = _mapped(exc, self._name, self._failures)
            if error is exc:
                raise
            raise error from exc

    def __aiter__(self) -> ResponseStream[Resp]:
        return self

    async def __anext__(self) -> Resp:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class RequestSlot:
    """The one request Trio hands to the loop; written before the pull that consumes it."""

    __slots__ = ("end", "request")

    def __init__(self) -> None:
        # Any: a request message of whichever stub method the Duplex drives; Duplex[Req, Resp]
        # types it for the caller.
        self.request: Any = None
        self.end = False

    def take(self) -> tuple[Any, bool]:
        request, self.request = self.request, None
        if request is None:
            raise RuntimeError("duplex pulled without a request")
        return request, self.end


async def duplex_messages(
    method: Any, slot: RequestSlot, metadata: Mapping[str, str], deadline: float | None
) -> AsyncIterator[Any]:
    """Loop side of a :class:`Duplex`: per pull, send the slot's request and yield the answer.

    ``Any``: ``method`` is a grpclib stub method of any service (typed by the Duplex's caller).
    """
    async with method.open(metadata=metadata, timeout=deadline) as stream:
        while True:
            request, end = slot.take()
            await stream.send_message(request, end=end)
            response = await stream.recv_message()
            if response is None:
                # The server ended the call without answering: end our side too, so leaving
                # the context reads the trailers and raises their status.
                if not end:
                    with suppress(Exception):
                        await stream.end()
                return
            yield response
            if end:
                # containerd repeats its last response after our end; read up to the trailers.
                while await stream.recv_message() is not None:
                    pass
                return


class Duplex(Generic[Req, Resp]):
    """A lock-step bidirectional stream: :meth:`exchange` sends one request, returns its answer.

    Obtained from :meth:`._remote.Remote.open_duplex`; usable only inside its block.
    """

    def __init__(
        self,
        stream: BridgedStream[Resp],
        slot: RequestSlot,
        name: str,
        failures: collections.Counter[str],
    ) -> None:
        self._stream = stream
        self._slot = slot
        self._name = name
        self._failures = failures
        self._done = False

    @property
    def done(self) -> bool:
        """True once the last exchange ended the stream, or an exchange failed."""
        return self._done

    async def exchange(self, request: Req, *, end: bool = False) -> Resp:
        """Send ``request`` and return the server's answer to it.

        With ``end=True`` this is the last request: the stream is then read to its end, and an
        error status the server sends after its answer is raised here.
        """
        if self._done:
            raise RuntimeError(f"{self._name}: the stream is finished")
        self._slot.request = request
        self._slot.end = end
        self._done = True  # until it completes: a cancelled or failed exchange breaks it
        response = await self._receive(final=False)
        if end:
            with suppress(trio.EndOfChannel):
                await self._receive(final=True)
                self._failures[self._name] += 1
                raise Internal(f"{self._name}: more responses than requests")
        else:
            self._done = False
        return response

    async def _receive(self, *, final: bool) -> Resp:
        try:
            return await self._stream.receive()
        except trio.EndOfChannel:
            if final:
                raise
            self._failures[self._name] += 1
            raise Internal(f"{self._name}: the server ended the stream without an answer") from None
        except trio.Cancelled:
            raise
        except BaseException as exc:
            error = _mapped(exc, self._name, self._failures)
            if error is exc:
                raise
            raise error from exc
