"""Streaming RPCs seen from Trio: server streams and request/answer bidirectional streams.

Both ride on :meth:`AsyncioBridge.open_stream`, so the grpclib stream lives in one asyncio task
that is entered, iterated and closed there, and the asyncio side never waits on Trio: it waits
on the bridge's pull future, which Trio completes.

A :class:`Duplex` is a client or bidirectional stream whose server answers every request with
exactly one response (containerd's Content.Write). Trio puts one request in a one-slot box and
pulls; the loop takes the request and sends it, while a reader task in the loop collects the
answers as they come. :meth:`Duplex.exchange` waits for its answer (lock-step);
:meth:`Duplex.send` returns once the loop has taken the *previous* request onto the wire (the
bridge's prefetch), so Trio reads the next piece of a blob while this one travels. At most one
request waits in the loop's hands and HTTP/2 flow control bounds the bytes beyond it; the
answers are tiny and come back, in order, from later calls. The last request is sent with
``end=True``; the duplex then reads the stream to its end (containerd repeats its last
response after the client ends) and reports the call's final status.

Cancellation: a cancelled :meth:`Duplex.exchange` or :meth:`Duplex.send` leaves the duplex
broken (the request may or may not have reached the server); leaving the ``async with``
cancels the asyncio task, which resets the gRPC stream. :meth:`Duplex.close` instead ends the
stream without a request and waits for every answer and for the server to finish.

Errors are ours (``actors.errors``), never grpclib's, and each stream counts as one RPC; a
stream that fails counts one failure. A request the server refuses while others are in flight
fails the next call.
"""

from __future__ import annotations

import asyncio
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
    """The one request Trio hands to the loop; written before the pull that consumes it.

    ``wait``: the pull answers only once every request sent so far is answered. ``close``: the
    pull sends nothing but ends our side, and reads the stream to its end.
    """

    __slots__ = ("close", "end", "request", "wait")

    def __init__(self) -> None:
        # Any: a request message of whichever stub method the Duplex drives; Duplex[Req, Resp]
        # types it for the caller.
        self.request: Any = None
        self.end = False
        self.wait = True
        self.close = False

    def take(self) -> tuple[Any, bool, bool]:
        request, self.request = self.request, None
        if self.close:
            self.close = False
            return None, True, True
        if request is None:
            raise RuntimeError("duplex pulled without a request")
        return request, self.end, self.wait


async def duplex_messages(
    method: Any, slot: RequestSlot, metadata: Mapping[str, str], deadline: float | None
) -> AsyncIterator[list[Any]]:
    """Loop side of a :class:`Duplex`: per pull, send the slot's request and yield the answers
    that arrived since the last pull (with ``wait``: once every request sent is answered).

    A reader task collects the answers as they come, so requests need not wait for them.
    After the last request (``end``) the stream is read to its end: containerd repeats its
    last response after our end, and answers beyond the requests sent are dropped. If the
    server ends the stream before answering everything, the generator ends our side too and
    returns, so leaving the context reads the trailers and raises their status.

    ``Any``: ``method`` is a grpclib stub method of any service (typed by the Duplex's caller).
    """
    async with method.open(metadata=metadata, timeout=deadline) as stream:
        answers: list[Any] = []
        arrived = asyncio.Event()

        async def read() -> None:
            try:
                while (answer := await stream.recv_message()) is not None:
                    answers.append(answer)
                    arrived.set()
            finally:
                arrived.set()

        reader: asyncio.Task[None] | None = None
        sent = taken = 0
        try:
            while True:
                request, end, wait = slot.take()
                if reader is not None and reader.done():
                    break  # the server ended the stream early: its status says why
                if request is not None:
                    try:
                        await stream.send_message(request, end=end)
                    except Exception:
                        if reader is None:
                            raise
                        # The stream broke under the send; the reader has the server's reason.
                        await asyncio.wait([reader])
                        break
                    sent += 1
                    if reader is None:
                        reader = asyncio.ensure_future(read())
                elif end and reader is not None:
                    # Closing without a request: our end lets the server finish its handler.
                    with suppress(Exception):
                        await stream.end()
                assert reader is not None  # Duplex.close pulls only after a request went
                if end:
                    await asyncio.wait([reader])
                elif wait:
                    while len(answers) < sent and not reader.done():
                        arrived.clear()
                        await arrived.wait()
                if reader.done() and len(answers) < sent:
                    break
                batch = answers[taken:sent]
                taken += len(batch)
                yield batch
                if end:
                    break
            if reader is not None and reader.done() and (error := reader.exception()):
                raise error
            if not end:
                # Ending our side lets the context's exit read the trailers (and raise them).
                with suppress(Exception):
                    await stream.end()
        finally:
            if reader is not None:
                if not reader.done():
                    reader.cancel()
                # Awaited also when done: an error nobody asked for is retrieved (asyncio
                # would log it as never retrieved); what the caller needs was raised above.
                with suppress(BaseException):
                    await reader


class Duplex(Generic[Req, Resp]):
    """A bidirectional stream whose server answers every request with exactly one response.

    :meth:`exchange` sends one request and returns its answer (lock-step). :meth:`send`
    sends without waiting for the answer, so the caller prepares the next request while this
    one travels (one request at most is in the loop's hands; HTTP/2 flow control bounds the
    bytes beyond); the answers come back, in order, from later calls.

    Obtained from :meth:`._remote.Remote.open_duplex`; usable only inside its block.
    """

    def __init__(
        self,
        stream: BridgedStream[list[Resp]],
        slot: RequestSlot,
        name: str,
        failures: collections.Counter[str],
    ) -> None:
        self._stream = stream
        self._slot = slot
        self._name = name
        self._failures = failures
        self._done = False
        self._in_flight = False  # a pull was started by send() and not received yet
        self._unanswered = 0
        self._sent = False

    @property
    def done(self) -> bool:
        """True once the last exchange ended the stream, or an exchange failed."""
        return self._done

    @property
    def unanswered(self) -> int:
        """Requests sent whose answers were not returned yet."""
        return self._unanswered

    async def exchange(self, request: Req, *, end: bool = False) -> Resp:
        """Send ``request`` and return the server's answer to it.

        With ``end=True`` this is the last request: the stream is then read to its end, and an
        error status the server sends after its answer is raised here. Not after :meth:`send`
        left answers outstanding (they would be lost): use ``send(..., wait=True)`` then.
        """
        if self._unanswered:
            raise RuntimeError(f"{self._name}: answers are outstanding; use send(wait=True)")
        return (await self.send(request, end=end, wait=True))[-1]

    async def send(self, request: Req, *, end: bool = False, wait: bool = False) -> list[Resp]:
        """Send ``request``; return the answers that arrived since the last call, in order.

        ``wait=True`` (implied by ``end``) returns only once every request is answered, so the
        last answer returned is this request's. Without it, this returns as soon as the loop
        has taken the *previous* request onto the wire.
        """
        if self._done:
            raise RuntimeError(f"{self._name}: the stream is finished")
        self._done = True  # until it completes: a cancelled or failed send breaks it
        answers: list[Resp] = []
        if self._in_flight:
            self._in_flight = False
            answers = await self._receive(final=False)
        self._slot.request = request
        self._slot.end = end
        self._slot.wait = wait or end
        self._sent = True
        self._unanswered += 1 - len(answers)
        if wait or end:
            batch = await self._receive(final=False)
            answers.extend(batch)
            self._unanswered -= len(batch)
            if self._unanswered:
                self._failures[self._name] += 1
                raise Internal(f"{self._name}: fewer answers than requests")
            if end:
                with suppress(trio.EndOfChannel):
                    await self._receive(final=True)
                    self._failures[self._name] += 1
                    raise Internal(f"{self._name}: more responses than requests")
                return answers
        else:
            self._stream.prefetch()
            self._in_flight = True
        self._done = False
        return answers

    async def close(self) -> list[Resp]:
        """End our side without a request and read the stream to its end; return the answers
        not returned yet. Unlike leaving the block (which resets the stream), the server's
        handler has finished when this returns -- e.g. containerd's content writer is closed,
        so an Abort of its ingest that follows cannot race it."""
        if self._done:
            raise RuntimeError(f"{self._name}: the stream is finished")
        self._done = True
        answers: list[Resp] = []
        if self._in_flight:
            self._in_flight = False
            answers = await self._receive(final=False)
        self._unanswered -= len(answers)
        if not self._sent:
            return answers  # nothing reached the server: nothing to close there
        self._slot.close = True
        batch = await self._receive(final=False)
        answers.extend(batch)
        self._unanswered -= len(batch)
        with suppress(trio.EndOfChannel):
            await self._receive(final=True)
            self._failures[self._name] += 1
            raise Internal(f"{self._name}: more responses than requests")
        return answers

    async def _receive(self, *, final: bool) -> list[Resp]:
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
