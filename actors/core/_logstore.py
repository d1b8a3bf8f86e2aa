"""One container's log on disk: an appending writer, size-based rotation, and readers.

Files live in the store's directory: ``log`` (being written), then ``log.1`` (newest rotated)
up to ``log.<max_files - 1>``. Records are framed by :mod:`actors._logformat`. The writer
appends whole records with one write(2) each and never waits for readers: the disk is the
buffer, bounded by ``max_size * max_files``. Readers hold their own file descriptors, so a
rotation (a rename) or a removal never cuts a read short; a follower is woken by the writer
in-process (no polling), and after a restart a reader simply opens the files.

Writes are plain synchronous write(2) calls into the page cache (no fsync, as docker): a
slow disk slows the task draining the FIFO, which is the backpressure we want. After a
crash, a record cut short at the end of ``log`` is skipped by readers and truncated away
when a writer reopens the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Final

import msgspec
import trio

from ._logformat import (
    MAX_PAYLOAD,
    RECORD_OVERHEAD,
    LogRecord,
    LogStream,
    TailCounter,
    decode_records,
    encode_gap,
    encode_record,
    record_before,
    valid_end,
)

__all__ = ["LogConfig", "LogReadOptions", "LogStore", "LogStoreStatistics"]

CURRENT: Final = "log"
_READ_CHUNK: Final = 1 << 18
#: A follower woken by a small append waits this long for more (bounds the added latency).
COALESCE_SECONDS: Final = 0.002
COALESCE_BYTES: Final = 1 << 16
_ALL_STREAMS: Final = frozenset({int(LogStream.STDOUT), int(LogStream.STDERR)})
MIN_LOG_SIZE: Final = 4096


class LogConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Rotation: a file is rotated before it would exceed ``max_size`` bytes; at most
    ``max_files`` files (the one being written included) are kept. docker's ``local`` driver
    defaults are 20 MB and 5 files."""

    max_size: int = 20 * 1024 * 1024
    max_files: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.max_size, int) or self.max_size < MIN_LOG_SIZE:
            raise ValueError(f"log max_size must be at least {MIN_LOG_SIZE} bytes")
        if not isinstance(self.max_files, int) or not 1 <= self.max_files <= 1000:
            raise ValueError("log max_files must be between 1 and 1000")


class LogReadOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What a reader wants: ``tail`` lines (None: all), records in [``since``, ``until``]
    (ns since the epoch), of ``streams``; ``follow`` waits for more until the writer ends."""

    follow: bool = False
    tail: int | None = None
    since: int | None = None
    until: int | None = None
    streams: frozenset[int] = _ALL_STREAMS

    def __post_init__(self) -> None:
        if self.tail is not None and self.tail < 0:
            raise ValueError("tail must not be negative")
        if not self.streams or not self.streams <= _ALL_STREAMS:
            raise ValueError("streams must be a non-empty subset of {1 (stdout), 2 (stderr)}")


class LogStoreStatistics(msgspec.Struct, frozen=True, kw_only=True):
    writing: bool
    bytes_written: int
    records_written: int
    rotations: int
    recovered_bytes_discarded: int
    readers: int


class LogStore:
    """The log of one container (any number of readers, at most one writer)."""

    def __init__(self, directory: str | os.PathLike[str], config: LogConfig | None = None) -> None:
        self.directory = Path(directory)
        self.config = config or LogConfig()
        self.generation = 0  # of ``log``; ``log.k`` holds generation - k
        self._fd: int | None = None
        self._open = False  # between start_writing and finish (the fd may be briefly gone)
        self._size = 0
        self._removed = False
        self._appended = trio.lowlevel.ParkingLot()
        self._skipped: dict[int, int] = {}  # generation -> payload bytes of a deleted file
        self._bytes_written = 0
        self._records_written = 0
        self._rotations = 0
        self._discarded = 0
        self._readers = 0

    # -- writing ----------------------------------------------------------------------------

    @property
    def writing(self) -> bool:
        return self._open

    def start_writing(self) -> None:
        """Open ``log`` for appending (creating the directory), cutting off a torn record."""
        if self._removed:
            raise RuntimeError("the log store was removed")
        if self._open:
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.files()[: -self.config.max_files]:  # max_files was lowered
            stale.unlink(missing_ok=True)
        path = self.directory / CURRENT
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            size = os.fstat(fd).st_size
            good = valid_end(lambda offset, n: os.pread(fd, n, offset), size)
            if good != size:
                os.ftruncate(fd, good)
                self._discarded += size - good
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, good
        self._open = True

    def _reopen(self) -> None:
        # After a failed rotation (full disk, say): append to whatever ``log`` is now.
        fd = os.open(
            self.directory / CURRENT,
            os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
        )
        self._fd, self._size = fd, os.fstat(fd).st_size

    def append(self, stream: int, data: bytes, *, timestamp: int | None = None) -> None:
        """Append what a process wrote (split into records of at most 64 KiB)."""
        if not data:
            return
        when = timestamp or time.time_ns()
        # Records never straddle files and no file outgrows max_size, even one record.
        piece = min(MAX_PAYLOAD, self.config.max_size - RECORD_OVERHEAD)
        for start in range(0, len(data), piece):
            chunk = data[start : start + piece]
            self._write(encode_record(stream, when, chunk), len(chunk))

    def append_gap(self, stream: int, dropped: int, *, timestamp: int | None = None) -> None:
        """Record that ``dropped`` bytes of ``stream`` were lost at this point (lossy mode)."""
        self._write(encode_gap(stream, timestamp or time.time_ns(), dropped), 0)

    def _write(self, encoded: bytes, payload: int) -> None:
        """Append one whole record; OSError (then retry) leaves no partial record behind
        except what a crash would, which readers skip."""
        if not self._open:
            raise RuntimeError("the log store is not open for writing")
        if self._fd is None:
            self._reopen()
        if self._size and self._size + len(encoded) > self.config.max_size:
            self._rotate()
        assert self._fd is not None
        start = self._size
        view = memoryview(encoded)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # no torn record in front of the retry
            raise
        self._size += len(encoded)
        self._bytes_written += payload
        self._records_written += 1
        self._appended.unpark_all()

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        keep = self.config.max_files
        oldest = self.directory / (f"{CURRENT}.{keep - 1}" if keep > 1 else CURRENT)
        with contextlib.suppress(FileNotFoundError):
            self._skipped[self.generation - (keep - 1)] = oldest.stat().st_size
            oldest.unlink()
        for index in range(keep - 2, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rename(
                    self.directory / f"{CURRENT}.{index}", self.directory / f"{CURRENT}.{index + 1}"
                )
        if keep > 1:
            os.rename(self.directory / CURRENT, self.directory / f"{CURRENT}.1")
        while len(self._skipped) > 64:
            del self._skipped[min(self._skipped)]
        self.generation += 1
        self._rotations += 1
        self._size = 0
        self._fd = os.open(
            self.directory / CURRENT,
            os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_TRUNC,
            0o600,
        )

    def finish(self) -> None:
        """The writer is done (the process exited): followers read to the end and stop."""
        self._open = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._appended.unpark_all()

    def remove(self) -> None:
        """Delete the files (with the container). Open readers finish what they hold."""
        self.finish()
        self._removed = True
        shutil.rmtree(self.directory, ignore_errors=True)

    def statistics(self) -> LogStoreStatistics:
        return LogStoreStatistics(
            writing=self.writing,
            bytes_written=self._bytes_written,
            records_written=self._records_written,
            rotations=self._rotations,
            recovered_bytes_discarded=self._discarded,
            readers=self._readers,
        )

    def files(self) -> list[Path]:
        """The existing files, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        rotated = []
        for name in names:
            prefix, dot, index = name.partition(".")
            if prefix == CURRENT and dot and index.isdigit():
                rotated.append((int(index), name))
        found = [self.directory / name for _index, name in sorted(rotated, reverse=True)]
        if CURRENT in names:
            found.append(self.directory / CURRENT)
        return found

    # -- reading ----------------------------------------------------------------------------

    def _path_of(self, generation: int) -> Path:
        back = self.generation - generation
        return self.directory / (CURRENT if back == 0 else f"{CURRENT}.{back}")

    def _open_all(self) -> list[tuple[int, int]]:
        """(generation, fd) of every file, oldest first, opened without a checkpoint between
        (so no rotation can slip in)."""
        opened: list[tuple[int, int]] = []
        try:
            for path in self.files():
                back = 0 if path.name == CURRENT else int(path.name.rsplit(".", 1)[1])
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                    opened.append((self.generation - back, fd))
        except BaseException:
            for _gen, fd in opened:
                os.close(fd)
            raise
        return opened

    async def read(self, options: LogReadOptions | None = None) -> AsyncGenerator[LogRecord, None]:
        """Yield records as ``options`` ask; with ``follow``, until the writer finishes.

        Use it under ``contextlib.aclosing`` (it holds file descriptors until closed).
        """
        async with contextlib.aclosing(self.read_batches(options)) as batches:
            async for batch in batches:
                for record in batch:
                    yield record

    async def read_batches(
        self, options: LogReadOptions | None = None
    ) -> AsyncGenerator[list[LogRecord], None]:
        """Like :meth:`read`, in the batches one read(2) of the file gives (never empty): a
        consumer can handle many small records at once without waiting for more to come.

        Use it under ``contextlib.aclosing`` (it holds file descriptors until closed).
        """
        options = options or LogReadOptions()
        opened = self._open_all()
        cursors = [_Cursor(fd) for _gen, fd in opened]
        own: int | None = None  # a file the follower opened (after a rotation)
        self._readers += 1
        try:
            first, skip = 0, 0
            if options.tail is not None:
                first, skip = _tail_start(cursors, options)
            for cursor in cursors[first:]:
                while batch := cursor.batch():
                    if skip:
                        head = batch[0]
                        batch[0] = LogRecord(head.stream, head.timestamp, head.data[skip:])
                        skip = 0
                    selected, stop = _select_all(batch, options)
                    if selected:
                        yield selected
                    if stop:
                        return
                    await trio.lowlevel.checkpoint()
            if not options.follow:
                return
            # Following: read the newest file as it grows, moving on when it rotates.
            current: _Cursor | None = None
            generation = self.generation
            if cursors:
                generation, current = opened[-1][0], cursors[-1]
                if first >= len(cursors):  # tail 0: only what comes next
                    current.offset = current.valid_end()
            while True:
                if current is not None:
                    while batch := current.batch():
                        selected, stop = _select_all(batch, options)
                        if selected:
                            yield selected
                        if stop:
                            return
                        await trio.lowlevel.checkpoint()
                    if generation < self.generation:  # rotated away: that file is complete
                        generation += 1
                        current = None
                if current is None:
                    if own is not None:
                        os.close(own)
                        own = None
                    while generation < self.generation and not self._path_of(generation).exists():
                        lost = self._skipped.get(generation)
                        if lost:  # this reader fell more than max_files behind
                            yield [LogRecord(0, time.time_ns(), b"", lost)]
                        generation += 1
                    with contextlib.suppress(FileNotFoundError):
                        own = os.open(self._path_of(generation), os.O_RDONLY | os.O_CLOEXEC)
                        current = _Cursor(own)
                        continue
                if not self.writing:
                    return
                await self._appended.park()
                if current is not None:
                    await self._gather(current, generation)
        finally:
            self._readers -= 1
            if own is not None:
                os.close(own)
            for _gen, fd in opened:
                os.close(fd)

    async def _gather(self, current: _Cursor, generation: int) -> None:
        """Woken by an append: let a little more accumulate before reading.

        A process writing many small pieces leaves one small record per read of its FIFO,
        and reading (and sending) each alone costs many times what its bytes do. So wait,
        at most COALESCE_SECONDS, until a good read's worth is there; a rotation or the
        writer's end stops the wait at once (a reader must not fall behind the rotation).
        """
        enough = min(COALESCE_BYTES, self.config.max_size // 2)
        with trio.move_on_after(COALESCE_SECONDS):
            while (
                self.writing
                and generation == self.generation
                and self._size - current.offset < enough
            ):
                await self._appended.park()


class _Cursor:
    """Reads whole records of one file forward from ``offset``; stops at its end or at a
    torn or corrupt record."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def valid_end(self) -> int:
        return valid_end(self.read_at, os.fstat(self.fd).st_size)

    def batch(self) -> list[LogRecord]:
        """The whole records of the next chunk (empty at the end or at damage)."""
        data = os.pread(self.fd, _READ_CHUNK, self.offset)
        records = []
        consumed = 0
        for end, record in decode_records(data):
            if record is None:
                break
            records.append(record)
            consumed = end
        self.offset += consumed
        return records


_STOP: Final = LogRecord(0, 0, b"")


def _select_all(batch: list[LogRecord], options: LogReadOptions) -> tuple[list[LogRecord], bool]:
    """The records of ``batch`` that ``options`` want, and whether reading stops after them."""
    selected: list[LogRecord] = []
    for record in batch:
        verdict = _select(record, options)
        if verdict is _STOP:
            return selected, True
        if verdict is not None:
            selected.append(verdict)
    return selected, False


def _select(record: LogRecord, options: LogReadOptions) -> LogRecord | None:
    if options.until is not None and record.timestamp > options.until:
        return _STOP
    if options.since is not None and record.timestamp < options.since:
        return None
    if record.stream not in options.streams and record.stream != 0:
        return None
    if not record.data and not record.dropped:
        return None
    return record


def _tail_start(cursors: list[_Cursor], options: LogReadOptions) -> tuple[int, int]:
    """Position the cursors where the last ``tail`` lines start: (first file, bytes to skip
    in its first record)."""
    if not options.tail:
        return len(cursors), 0
    counter = TailCounter(options.tail)
    for index in range(len(cursors) - 1, -1, -1):
        cursor = cursors[index]
        end = cursor.valid_end()
        while end > 0:
            found = record_before(cursor.read_at, end)
            if found is None:
                break
            start, record = found
            if record.stream in options.streams and record.data:
                cut = counter.feed(record.data)
                if cut is not None:
                    cursor.offset = start
                    return index, cut
            end = start
        if end > 0:  # damage before this point: start after it
            cursor.offset = end
            return index, 0
    return 0, 0
