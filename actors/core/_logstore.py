"""One container's log on disk: an appending writer, size-based rotation, and readers.

Files live in the store's directory: ``log`` (being written), then ``log.1`` (newest rotated)
up to ``log.<max_files - 1>``. Records are framed by :mod:`actors._logformat`. The writer
appends whole records with one write(2) each and never waits for readers: the disk is the
buffer, bounded by ``max_size * max_files``. Readers hold their own file descriptors, so a
rotation (a rename) or a removal never cuts a read short; a follower is woken by the writer
in-process (no polling), and after a restart a reader simply opens the files.

Writes are plain synchronous calls into the page cache (no fsync, as docker): a slow disk
slows the task draining the FIFO, which is the backpressure we want.

Two ways in. :meth:`LogStore.append` writes bytes the caller holds (one pwrite per record).
:meth:`LogStore.append_from_fifo` never holds them: it writes the header announcing how many
bytes the FIFO has, moves exactly those from the FIFO into the file with splice(2) (one kernel
step takes them from the FIFO and puts them in the file), then reads them back for the
trailer's CRC. Whatever a SIGKILL interrupts, every byte that left the FIFO is in the file and
every byte that did not is still in the FIFO. When a writer reopens the file it repairs the
end (:func:`~actors.core._logformat.tail_repair`): a torn header is cut; a record whose
payload is short is completed from that stream's FIFO (the caller passes the re-opened
FIFOs) and given its trailer; bytes that can no longer be had (the FIFO is gone, or they were
in a crashed writer's memory) are recorded as a gap, so readers are told.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Final

import msgspec
import trio

from ._logformat import (
    FLAG_SPLICED,
    HEADER_SIZE,
    MAX_PAYLOAD,
    RECORD_OVERHEAD,
    LogRecord,
    LogStream,
    TailCounter,
    decode_records,
    encode_gap,
    encode_header,
    encode_record,
    encode_trailer,
    record_before,
    tail_repair,
    valid_end,
)

__all__ = ["LogConfig", "LogReadOptions", "LogStore", "LogStoreStatistics"]

CURRENT: Final = "log"
# Fault injection for the crash tests only: "<point>:<n>" SIGKILLs this process at ``point``
# (after_header, mid_splice, before_trailer) of the n-th record moved from a FIFO.
CRASH_ENV: Final = "CONTAINERD_ACTORS_TEST_CRASH"
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
    recovered_bytes_discarded: int  # garbage or torn headers cut off when reopening
    recovered_bytes_completed: int  # payload a crash left in a FIFO, moved in when reopening
    recovered_bytes_lost: int  # payload that could no longer be had: recorded as gaps
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
        self._completed = 0
        self._lost = 0
        self._readers = 0
        self._torn: int | None = None  # the stream of a record a failed write left unfinished
        self._can_splice = True

    # -- writing ----------------------------------------------------------------------------

    @property
    def writing(self) -> bool:
        return self._open

    def start_writing(self, fifos: Mapping[int, int] | None = None) -> None:
        """Open ``log`` for writing (creating the directory) and repair its end.

        ``fifos`` (stream -> the re-opened FIFO's fd, non-blocking) are where the rest of a
        record a crash interrupted is found; pass them only when re-attaching to the same
        process whose output was being written (a new process's FIFO holds other bytes).
        """
        if self._removed:
            raise RuntimeError("the log store was removed")
        if self._open:
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.files()[: -self.config.max_files]:  # max_files was lowered
            stale.unlink(missing_ok=True)
        fd = _open_for_writing(self.directory / CURRENT)
        try:
            self._fd = fd
            self._size = self._repair(fifos or {})
        except BaseException:
            self._fd = None
            os.close(fd)
            raise
        self._open = True

    def _repair(self, fifos: Mapping[int, int]) -> int:
        """Make the file end with whole records (see the module docstring); its new size."""
        fd = self._fd
        assert fd is not None
        size = os.fstat(fd).st_size
        plan = tail_repair(lambda offset, n: os.pread(fd, n, offset), size)
        start = plan.good
        if not plan.length:
            if start != size:
                os.ftruncate(fd, start)
                self._discarded += size - start
            self._torn = None
            return start
        payload_end = start + HEADER_SIZE + plan.have
        if size > payload_end:
            os.ftruncate(fd, payload_end)  # a torn trailer: written again below
        got = 0
        fifo = fifos.get(plan.stream) if plan.spliced else None
        if fifo is not None and plan.missing:
            got = self._move(fifo, plan.missing, payload_end)
        length = plan.have + got
        lost = plan.missing - got
        if length == 0:
            os.ftruncate(fd, start)
            end = start
        else:
            header = encode_header(plan.stream, plan.flags, length, plan.timestamp)
            if lost:
                _pwrite_all(fd, header, start)  # the record holds what could be had
            payload = os.pread(fd, length, start + HEADER_SIZE)
            _pwrite_all(fd, encode_trailer(header, payload), start + HEADER_SIZE + length)
            end = start + RECORD_OVERHEAD + length
        self._completed += got
        self._torn = None
        if lost:
            gap = encode_gap(plan.stream, plan.timestamp, lost)
            _pwrite_all(fd, gap, end)
            end += len(gap)
            self._lost += lost
        return end

    def _move(self, fifo: int, count: int, offset: int) -> int:
        """Move up to ``count`` bytes from ``fifo`` into the file at ``offset`` (what the FIFO
        has now, without waiting); how many moved."""
        assert self._fd is not None
        moved = 0
        while moved < count:
            try:
                if self._can_splice:
                    n = os.splice(
                        fifo,
                        self._fd,
                        count - moved,
                        offset_dst=offset + moved,
                        flags=os.SPLICE_F_NONBLOCK,
                    )
                else:
                    n = _pwrite_all(self._fd, os.read(fifo, count - moved), offset + moved)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS) or not self._can_splice:
                    raise
                # A file system without splice support: read and write instead (the bytes
                # are in memory for one write, with nothing awaited in between).
                self._can_splice = False
                continue
            if n == 0:
                break  # the FIFO has no writer left and nothing in it
            moved += n
        return moved

    def _reopen(self) -> None:
        # After a failed rotation (full disk, say): append to whatever ``log`` is now.
        fd = _open_for_writing(self.directory / CURRENT)
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
            self._write(encode_record(stream, when, chunk), len(chunk), stream)

    def append_gap(self, stream: int, dropped: int, *, timestamp: int | None = None) -> None:
        """Record that ``dropped`` bytes of ``stream`` were lost at this point (lossy mode)."""
        self._write(encode_gap(stream, timestamp or time.time_ns(), dropped), 0, stream)

    def _ready(self, record_size: int, stream: int) -> int:
        """Prepare to append a record of ``record_size`` bytes; the fd to write to."""
        if not self._open:
            raise RuntimeError("the log store is not open for writing")
        if self._fd is None:
            self._reopen()
        if self._torn is not None:
            # An earlier append_from_fifo failed halfway: its stream's drain completes it
            # (from its FIFO) before anything else is appended.
            if self._torn != stream:
                raise OSError(errno.EAGAIN, "waiting for the other stream's record")
            raise _TornRecord()
        if self._size and self._size + record_size > self.config.max_size:
            self._rotate()
        assert self._fd is not None
        return self._fd

    def _write(self, encoded: bytes, payload: int, stream: int = 0) -> None:
        """Append one whole record; OSError (then retry) leaves no partial record behind
        except what a crash would, which the next writer repairs."""
        try:
            fd = self._ready(len(encoded), stream)
        except _TornRecord:
            raise OSError(errno.EAGAIN, "waiting for this stream's record") from None
        start = self._size
        try:
            _pwrite_all(fd, encoded, start)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # no torn record in front of the retry
            raise
        self._appended_one(len(encoded), payload)

    def _appended_one(self, size: int, payload: int) -> None:
        self._size += size
        self._bytes_written += payload
        self._records_written += 1
        self._appended.unpark_all()

    def append_from_fifo(self, stream: int, fifo: int, available: int) -> int:
        """Move up to ``available`` bytes (what FIONREAD reported) of ``stream`` from the FIFO
        ``fifo`` (non-blocking, read by nobody else) into one record; how many moved.

        Header, splice, trailer, with nothing awaited in between. An OSError midway leaves
        the record unfinished in the file (its bytes are nowhere else): the next call for
        the same stream completes it from the FIFO first; other streams wait until then.
        """
        piece = min(available, MAX_PAYLOAD, self.config.max_size - RECORD_OVERHEAD)
        if piece < 1:
            return 0
        try:
            fd = self._ready(RECORD_OVERHEAD + piece, stream)
        except _TornRecord:
            self._size = self._repair({stream: fifo})
            self._appended.unpark_all()
            return 0
        start = self._size
        header = encode_header(stream, FLAG_SPLICED, piece, time.time_ns())
        try:
            _pwrite_all(fd, header, start)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # nothing was taken from the FIFO yet
            raise
        self._torn = stream
        if _crash_at is not None:
            piece = _maybe_crash("after_header", piece)
        moved = self._move(fifo, piece, start + HEADER_SIZE)
        if moved == 0:
            os.ftruncate(fd, start)  # cannot happen with one reader; nothing was taken
            self._torn = None
            return 0
        if moved < piece:
            header = encode_header(stream, FLAG_SPLICED, moved, _timestamp_of(header))
            _pwrite_all(fd, header, start)
        if _crash_at is not None:
            _maybe_crash("before_trailer", 0)
        payload = os.pread(fd, moved, start + HEADER_SIZE)
        _pwrite_all(fd, encode_trailer(header, payload), start + HEADER_SIZE + moved)
        self._torn = None
        self._appended_one(RECORD_OVERHEAD + moved, moved)
        return moved

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
        self._fd = _open_for_writing(self.directory / CURRENT, truncate=True)

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
            recovered_bytes_completed=self._completed,
            recovered_bytes_lost=self._lost,
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


def _parse_crash(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    point, _, count = value.partition(":")
    return point, int(count or 1)


_crash_at = _parse_crash(os.environ.get(CRASH_ENV))
_spliced_records = 0


def _maybe_crash(point: str, piece: int) -> int:
    """The test seam (see CRASH_ENV): die here, as a SIGKILL would kill us."""
    global _spliced_records
    assert _crash_at is not None
    wanted, count = _crash_at
    if point == "after_header":
        _spliced_records += 1
    if _spliced_records != count:
        return piece
    if point == "after_header" and wanted == "mid_splice" and piece > 1:
        return piece // 2  # the caller moves half, then dies below (before_trailer)
    if wanted == point or (wanted == "mid_splice" and point == "before_trailer"):
        os.kill(os.getpid(), signal.SIGKILL)
    return piece


class _TornRecord(Exception):
    """Internal: this stream's unfinished record must be completed first."""


def _open_for_writing(path: Path, *, truncate: bool = False) -> int:
    # Not O_APPEND: splice(2) refuses a file opened for appending; we write at our offset.
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(path, flags | (os.O_TRUNC if truncate else 0), 0o600)


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    return len(data)


def _timestamp_of(header: bytes) -> int:
    return int.from_bytes(header[8:16], "little", signed=True)


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
