"""Blobs into containerd's content store through Content.Write (see ContentStore.ingest).

A blob of at most :data:`CHUNK_SIZE` is one COMMIT message. A bigger one is a STAT (which
opens the ingest, or finds how far an interrupted one of the same ref got), WRITEs of
:data:`CHUNK_SIZE` from there, and a COMMIT carrying the last bytes and the labels; containerd
checks size and digest before committing. Bytes that can never become the blob (a digest or
size mismatch, a source longer than the descriptor) abort the ingest once the stream is gone.

The WRITEs are pipelined (:meth:`Duplex.send`): each travels while the next piece is read
from the source, and containerd's answers (the size it then holds) are checked in order as
they come back. When the source fails or the ingest is cancelled, the answers to what was
sent are awaited and the call ended gracefully (bounded by :data:`CLOSE_TIMEOUT`), so a resume
starts after every byte containerd acknowledged, and an Abort never races containerd's writer.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

import trio

from ..containerd._channel import Encoded
from ..errors import DataLoss, FailedPrecondition, NotFound, Unavailable
from ._pb import content_pb2
from ._types import BlobSource, Descriptor, IngestResult

if TYPE_CHECKING:
    from ._content import ContainerdImageServices, ContentWriter

__all__ = ["CHUNK_SIZE", "write_blob"]

CHUNK_SIZE: Final = 1 << 20
"""Bytes per Content.Write message (containerd's limit per message is 16 MiB)."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds a failed or cancelled ingest waits for containerd to answer the WRITEs in flight
and finish the call."""
LOCK_RETRIES: Final = 10
LOCK_BACKOFF: Final = 0.05


@contextlib.asynccontextmanager
async def open_source(
    source: BlobSource, offset: int, size: int
) -> AsyncIterator[AsyncIterator[bytes]]:
    """The source's bytes from ``offset`` on, in pieces of at most ``size`` bytes.

    Every async generator involved is closed on the way out (also the source's own, once we
    started reading it), so an abandoned ingest leaves no generator for the GC to finalise.
    """
    async with _open_parts(source, offset, size) as cut, contextlib.aclosing(_joined(cut)) as out:
        yield out


@contextlib.asynccontextmanager
async def _open_parts(
    source: BlobSource, offset: int, size: int
) -> AsyncIterator[AsyncIterator[list[Part]]]:
    """As :func:`open_source`, each piece as the list of its parts (joined by the caller)."""
    if callable(source) and not hasattr(source, "__aiter__"):
        iterable = source(offset)
        skip = 0
    else:
        iterable = source
        skip = offset
    iterator = aiter(iterable)

    async def skipped() -> AsyncGenerator[bytes, None]:
        remaining = skip
        async for chunk in iterator:
            if remaining:
                if len(chunk) <= remaining:
                    remaining -= len(chunk)
                    continue
                chunk = chunk[remaining:]
                remaining = 0
            yield chunk

    async with (
        contextlib.aclosing(skipped()) as pieces,
        contextlib.aclosing(_recut(pieces, size)) as cut,
    ):
        try:
            yield cut
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()


Part = bytes | memoryview


async def _recut(chunks: AsyncIterator[bytes], size: int) -> AsyncGenerator[list[Part], None]:
    """Re-cut a byte stream into pieces of exactly ``size`` bytes (the last may be shorter),
    each the list of its parts: whole chunks, or memoryviews of the chunks that straddle a
    boundary -- so no byte is copied here; whoever sends a piece joins it, once."""
    parts: list[Part] = []
    held = 0
    async for chunk in chunks:
        start, end = 0, len(chunk)
        while held + end - start >= size:
            stop = start + size - held
            parts.append(chunk if start == 0 and stop == end else memoryview(chunk)[start:stop])
            yield parts
            parts = []
            held = 0
            start = stop
        if start < end:
            parts.append(chunk if start == 0 else memoryview(chunk)[start:])
            held += end - start
    if parts:
        yield parts


def _join(parts: list[Part]) -> bytes:
    first = parts[0] if parts else b""
    return first if len(parts) == 1 and isinstance(first, bytes) else b"".join(parts)


async def _joined(cut: AsyncIterator[list[Part]]) -> AsyncGenerator[bytes, None]:
    async for parts in cut:
        yield _join(parts)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _write_request(offset: int, parts: list[Part], size: int) -> Encoded:
    """``WriteContentRequest{action: WRITE, offset, data}`` serialized by hand.

    The data is joined with the few header bytes in one copy; filling a protobuf message and
    serializing it were two copies of every byte. Fields in number order, as protobuf writes
    them: action (1, varint WRITE), offset (5, varint; left out when 0, as proto3 does) and
    data (6, length-delimited; left out when empty).
    """
    header = b"\x08" + _varint(content_pb2.WRITE)
    if offset:
        header += b"\x28" + _varint(offset)
    if not size:
        return Encoded(header)
    header += b"\x32" + _varint(size)
    return Encoded(b"".join([header, *parts]))


class _Mismatch(DataLoss):
    """Bytes that can never become the blob: the ingest is aborted."""


async def _commit(
    writer: ContentWriter,
    desc: Descriptor,
    message: content_pb2.WriteContentRequest,
) -> list[content_pb2.WriteContentResponse]:
    """Send the COMMIT (ending the stream); every answer not returned before, its own last."""
    try:
        return await writer.send(message, end=True)
    except FailedPrecondition as exc:
        # containerd refused the commit: the size or the digest differ.
        raise _Mismatch(
            f"blob {desc.digest}: content does not match its digest or size ({exc.message})",
            local=True,
        ) from None


def _check_committed(desc: Descriptor, response: content_pb2.WriteContentResponse) -> None:
    if response.digest != desc.digest or int(response.offset) != desc.size:
        raise DataLoss(
            f"blob {desc.digest}: containerd committed {response.digest} ({response.offset} bytes)",
            local=True,
        )


def _check_complete(desc: Descriptor, got: int) -> None:
    if got != desc.size:
        raise DataLoss(
            f"blob {desc.digest}: the source ended after {got} of {desc.size} bytes", local=True
        )


def _too_long(desc: Descriptor) -> _Mismatch:
    return _Mismatch(
        f"blob {desc.digest}: the source has more than the descriptor's {desc.size} bytes",
        local=True,
    )


async def _read_small(desc: Descriptor, source: BlobSource) -> bytes:
    data = bytearray()
    async with open_source(source, 0, CHUNK_SIZE) as chunks:
        async for chunk in chunks:
            data += chunk
            if len(data) > desc.size:
                raise _too_long(desc)
    _check_complete(desc, len(data))
    return bytes(data)


_T = TypeVar("_T")


async def _retry_locked(fn: Callable[..., Awaitable[_T]], *args: object) -> _T:
    """Run ``fn`` again while containerd says another writer holds the ingest's ref.

    Two ingests of one blob (two pulls sharing a layer) meet on the ref; the second waits for
    the first, then usually finds the blob committed (AlreadyExists: present).
    """
    for attempt in itertools.count():
        try:
            return await fn(*args)
        except Unavailable as exc:
            if "locked" not in exc.message or attempt >= LOCK_RETRIES:
                raise
        await trio.sleep(min(LOCK_BACKOFF * 2**attempt, 2.0))
    raise AssertionError("unreachable")  # pragma: no cover


async def write_blob(
    services: ContainerdImageServices,
    desc: Descriptor,
    source: BlobSource,
    labels: dict[str, str],
    lease: str | None,
    ref: str,
) -> IngestResult:
    """Write and commit one blob under ``ref`` (one Content.Write stream, see above).

    Raises DataLoss when the bytes cannot be the blob; AlreadyExists when containerd has it
    committed already (it then holds it for ``lease``).
    """
    try:
        if desc.size <= CHUNK_SIZE:
            data = await _read_small(desc, source)
            return await _retry_locked(_write_small, services, desc, data, labels, lease, ref)
        # The source is opened only once the ref is ours, so a retry reads it afresh.
        return await _retry_locked(_write_chunks, services, desc, source, labels, lease, ref)
    except _Mismatch:
        # After the stream is gone (it holds the ref's lock): drop the bytes.
        await _abort_shielded(services, ref)
        raise


async def _write_small(
    services: ContainerdImageServices,
    desc: Descriptor,
    data: bytes,
    labels: dict[str, str],
    lease: str | None,
    ref: str,
) -> IngestResult:
    # One COMMIT message (which truncates any earlier partial ingest of the ref).
    async with services.content_write(lease=lease) as writer:
        answers = await _commit(
            writer,
            desc,
            content_pb2.WriteContentRequest(
                action=content_pb2.COMMIT,
                ref=ref,
                total=desc.size,
                expected=desc.digest,
                offset=0,
                data=data,
                labels=labels,
            ),
        )
    _check_committed(desc, answers[-1])
    return IngestResult(digest=desc.digest, present=False, written=len(data))


async def _write_chunks(
    services: ContainerdImageServices,
    desc: Descriptor,
    source: BlobSource,
    labels: dict[str, str],
    lease: str | None,
    ref: str,
) -> IngestResult:
    request = content_pb2.WriteContentRequest
    async with services.content_write(lease=lease) as writer:
        # STAT opens (or resumes) the ingest and says how many bytes it already holds.
        status = await writer.exchange(
            request(action=content_pb2.STAT, ref=ref, total=desc.size, expected=desc.digest)
        )
        start = int(status.offset)
        if start > desc.size:
            start = 0  # not this blob's bytes; a WRITE at 0 truncates them
        offset = start
        pending: list[Part] = []
        pending_size = 0
        # WRITEs are pipelined: each is sent while the next piece is read, and its answer (the
        # size containerd then holds) is checked when it comes back, in order.
        holds: collections.deque[int] = collections.deque()

        def check(answers: list[content_pb2.WriteContentResponse]) -> None:
            for answer in answers:
                expected = holds.popleft()
                if int(answer.offset) != expected:
                    raise _Mismatch(
                        f"blob {desc.digest}: containerd holds {answer.offset} bytes,"
                        f" expected {expected}",
                        local=True,
                    )

        try:
            if offset < desc.size:
                # One piece held back, so the last one travels with the COMMIT.
                async with _open_parts(source, offset, CHUNK_SIZE) as pieces:
                    async for parts in pieces:
                        if pending:
                            answers = await writer.send(
                                _write_request(offset, pending, pending_size)
                            )
                            offset += pending_size
                            holds.append(offset)
                            check(answers)
                        pending, pending_size = parts, sum(map(len, parts))
                        if offset + pending_size > desc.size:
                            raise _too_long(desc)
            # A short but clean end keeps the bytes, for a resume from where they stop.
            _check_complete(desc, offset + pending_size)
        except BaseException:
            # The source failed, or we were cancelled, or the bytes are wrong: end the stream
            # gracefully rather than reset it. containerd answers what was sent first (so it
            # is known to be stored, and a resume starts after it) and closes its writer
            # before the call ends -- which writes into the ingest directory, so an Abort
            # racing it failed with "unlinkat ...: directory not empty".
            await _close_shielded(writer)
            raise
        answers = await _commit(
            writer,
            desc,
            request(
                action=content_pb2.COMMIT,
                offset=offset,
                data=_join(pending),
                total=desc.size,
                expected=desc.digest,
                labels=labels,
            ),
        )
        check(answers[:-1])
    _check_committed(desc, answers[-1])
    return IngestResult(
        digest=desc.digest, present=False, resumed_from=start, written=desc.size - start
    )


async def _close_shielded(writer: ContentWriter) -> None:
    if writer.done:
        return
    # Bounded: a containerd that stopped answering must not hold up a cancellation. Its
    # verdict does not matter here: the caller's own error is what propagates.
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True), contextlib.suppress(Exception):
        await writer.close()


async def _abort_shielded(services: ContainerdImageServices, ref: str) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(NotFound):
        await services.content_abort(ref)
