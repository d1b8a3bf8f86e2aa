"""Sans-IO core of the container log store: the record format, recovery, and tail counting.

A log file is a sequence of records, each::

    header  16 bytes  magic u16 | stream u8 | flags u8 | length u32 | timestamp ns i64
    payload length bytes (what the process wrote, as read from its FIFO: any bytes, and not
            necessarily whole lines)
    trailer  8 bytes  crc32 of header+payload u32 | length u32

all little-endian. docker's ``local`` driver frames protobuf entries with their size before and
after; CRI's format writes a timestamp and stream per line. We keep both ideas without either
encoding: the length at both ends lets a reader walk backwards from the end (``--tail``)
without an index, and the CRC tells a whole record from one a crash cut short. A record with
the GAP flag carries, as a u64 payload, how many bytes of that stream were dropped there
(lossy mode, or bytes a crash made unrecoverable).

A record with the SPLICED flag had its payload moved by the kernel straight from the
process's FIFO into the file (splice(2)): the header is written first, announcing how many
bytes the FIFO held, and the trailer after them. A crash in between leaves a header whose
payload is short, and the bytes still missing are, in order, at the head of that stream's FIFO
(nobody else reads it). :func:`tail_repair` finds such a record so that recovery can complete
it from the FIFO instead of cutting it off.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Final

import msgspec

__all__ = [
    "FLAG_GAP",
    "FLAG_SPLICED",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "RECORD_OVERHEAD",
    "TRAILER_SIZE",
    "LogRecord",
    "LogStream",
    "TailCounter",
    "TailRepair",
    "decode_records",
    "encode_gap",
    "encode_header",
    "encode_record",
    "encode_trailer",
    "record_before",
    "tail_repair",
    "valid_end",
]

MAGIC: Final = 0xCA1E
FLAG_GAP: Final = 0x01
FLAG_SPLICED: Final = 0x02
MAX_PAYLOAD: Final = 1 << 16
_HEADER = struct.Struct("<HBBIq")
_TRAILER = struct.Struct("<II")
_GAP = struct.Struct("<Q")
HEADER_SIZE: Final = _HEADER.size
TRAILER_SIZE: Final = _TRAILER.size
RECORD_OVERHEAD: Final = HEADER_SIZE + TRAILER_SIZE

# pread(offset, size) -> bytes: how the pure functions below read a file they do not own.
ReadAt = Callable[[int, int], bytes]


class LogStream(enum.IntEnum):
    STDOUT = 1
    STDERR = 2


class LogRecord(msgspec.Struct, frozen=True, array_like=True):
    """One record: ``data`` written to ``stream`` at ``timestamp`` (ns since the epoch).

    ``dropped`` > 0 marks a gap instead: that many bytes of the stream were lost here.
    """

    stream: int
    timestamp: int
    data: bytes
    dropped: int = 0


def encode_header(stream: int, flags: int, length: int, timestamp: int) -> bytes:
    """A record's header alone (the splicing writer sends the payload separately)."""
    if stream not in (LogStream.STDOUT, LogStream.STDERR):
        raise ValueError(f"unknown log stream {stream!r}")
    if not 0 <= length <= MAX_PAYLOAD:
        raise ValueError(f"a record holds at most {MAX_PAYLOAD} bytes, not {length}")
    return _HEADER.pack(MAGIC, stream, flags, length, timestamp)


def encode_trailer(header: bytes, payload: bytes) -> bytes:
    """The trailer that closes the record ``header`` + ``payload``."""
    return _TRAILER.pack(zlib.crc32(payload, zlib.crc32(header)), len(payload))


def _frame(stream: int, flags: int, timestamp: int, payload: bytes) -> bytes:
    header = _HEADER.pack(MAGIC, stream, flags, len(payload), timestamp)
    return header + payload + encode_trailer(header, payload)


def encode_record(stream: int, timestamp: int, data: bytes) -> bytes:
    """One or more records for ``data`` (split at MAX_PAYLOAD)."""
    if stream not in (LogStream.STDOUT, LogStream.STDERR):
        raise ValueError(f"unknown log stream {stream!r}")
    if len(data) <= MAX_PAYLOAD:
        return _frame(stream, 0, timestamp, data)
    return b"".join(
        _frame(stream, 0, timestamp, data[i : i + MAX_PAYLOAD])
        for i in range(0, len(data), MAX_PAYLOAD)
    )


def encode_gap(stream: int, timestamp: int, dropped: int) -> bytes:
    if dropped < 1:
        raise ValueError("a gap record needs a positive count")
    return _frame(stream, FLAG_GAP, timestamp, _GAP.pack(dropped))


def _parse(header: bytes, payload: bytes, trailer: bytes) -> LogRecord | None:
    magic, stream, flags, length, timestamp = _HEADER.unpack(header)
    crc, length_again = _TRAILER.unpack(trailer)
    if magic != MAGIC or length != length_again or length != len(payload):
        return None
    if zlib.crc32(payload, zlib.crc32(header)) != crc:
        return None
    if flags & FLAG_GAP:
        if length != _GAP.size:
            return None
        return LogRecord(stream, timestamp, b"", _GAP.unpack(payload)[0])
    return LogRecord(stream, timestamp, payload)


def _length_at(buffer: bytes | bytearray | memoryview, offset: int) -> int | None:
    """The payload length a header at ``offset`` announces, None if it is no header."""
    magic, _stream, _flags, length, _ts = _HEADER.unpack_from(buffer, offset)
    if magic != MAGIC or length > MAX_PAYLOAD:
        return None
    return int(length)


def decode_records(
    buffer: bytes | bytearray | memoryview,
) -> Iterator[tuple[int, LogRecord | None]]:
    """Yield ``(end offset, record)`` for each whole record at the start of ``buffer``.

    Stops quietly at an incomplete record (the caller reads more); yields ``(offset, None)``
    once and stops at a corrupt one (the rest of that file cannot be trusted).
    """
    view = memoryview(buffer)
    offset = 0
    while len(view) - offset >= HEADER_SIZE:
        length = _length_at(view, offset)
        if length is None:
            yield offset, None
            return
        end = offset + HEADER_SIZE + length + TRAILER_SIZE
        if end > len(view):
            return
        record = _parse(
            bytes(view[offset : offset + HEADER_SIZE]),
            bytes(view[offset + HEADER_SIZE : end - TRAILER_SIZE]),
            bytes(view[end - TRAILER_SIZE : end]),
        )
        if record is None:
            yield offset, None
            return
        offset = end
        yield offset, record


def record_before(read_at: ReadAt, end: int) -> tuple[int, LogRecord] | None:
    """The record that ends at ``end`` and where it starts, or None if none does."""
    if end < RECORD_OVERHEAD:
        return None
    trailer = read_at(end - TRAILER_SIZE, TRAILER_SIZE)
    if len(trailer) != TRAILER_SIZE:
        return None
    _crc, length = _TRAILER.unpack(trailer)
    start = end - RECORD_OVERHEAD - length
    if length > MAX_PAYLOAD or start < 0:
        return None
    body = read_at(start, HEADER_SIZE + length)
    if len(body) != HEADER_SIZE + length:
        return None
    record = _parse(body[:HEADER_SIZE], body[HEADER_SIZE:], trailer)
    return None if record is None else (start, record)


def valid_end(read_at: ReadAt, size: int, *, chunk: int = 1 << 18) -> int:
    """Where the intact records of a file end (a crash may have cut the last one short).

    The last record is checked first (O(1) for a clean file); otherwise the file is scanned
    from the start and everything after the first bad record is discarded.
    """
    if size == 0 or record_before(read_at, size) is not None:
        return size
    good = 0
    pending = b""
    position = 0
    while position < size:
        data = read_at(position, min(chunk, size - position))
        if not data:
            break
        position += len(data)
        pending += data
        consumed = 0
        for offset, record in decode_records(pending):
            if record is None:
                return good + consumed
            consumed = offset
        good += consumed
        pending = pending[consumed:]
    return good


class TailRepair(msgspec.Struct, frozen=True, kw_only=True):
    """What recovery does at the end of a file (see :func:`tail_repair`).

    Intact records end at ``good``. If ``length`` is 0 everything after ``good`` goes (a torn
    header, garbage, or a damaged whole record). Otherwise a record starting at ``good``
    announced ``length`` payload bytes of ``stream`` (header fields ``flags`` and
    ``timestamp``) and ``have`` of them are in the file: the trailer is to be written after
    the missing ``length - have`` bytes, which for a ``spliced`` record are still at the head
    of that stream's FIFO (for any other record they are lost and must be reported).
    """

    good: int
    stream: int = 0
    flags: int = 0
    timestamp: int = 0
    length: int = 0
    have: int = 0

    @property
    def missing(self) -> int:
        return self.length - self.have

    @property
    def spliced(self) -> bool:
        return bool(self.flags & FLAG_SPLICED)


def tail_repair(read_at: ReadAt, size: int) -> TailRepair:
    """Decide how to repair a file of ``size`` bytes whose writer may have crashed.

    Only the last record can be unfinished: one thread appends records, a whole one at a
    time. A header that is whole, names a known stream and is followed by less than its
    payload and trailer is such a record: it is to be completed, not cut. Anything else after
    the intact records is cut.
    """
    good = valid_end(read_at, size)
    rest = size - good
    if rest < HEADER_SIZE:
        return TailRepair(good=good)  # clean, or a torn header (nothing of its payload moved)
    header = read_at(good, HEADER_SIZE)
    if len(header) != HEADER_SIZE:
        return TailRepair(good=good)
    magic, stream, flags, length, timestamp = _HEADER.unpack(header)
    if (
        magic != MAGIC
        or stream not in (LogStream.STDOUT, LogStream.STDERR)
        or flags & FLAG_GAP
        or not 0 < length <= MAX_PAYLOAD
        or rest >= HEADER_SIZE + length + TRAILER_SIZE  # whole yet invalid: damage, no crash
    ):
        return TailRepair(good=good)
    return TailRepair(
        good=good,
        stream=stream,
        flags=flags,
        timestamp=timestamp,
        length=length,
        have=min(rest - HEADER_SIZE, length),
    )


class TailCounter:
    """Finds where the last ``lines`` lines begin, fed payloads newest first.

    A line ends with a newline; an unterminated last line counts as one. ``feed`` returns
    the offset in that payload where output starts, or None to be fed the one before.
    """

    def __init__(self, lines: int) -> None:
        if lines < 1:
            raise ValueError("tail needs at least one line")
        self._remaining = lines
        self._first = True

    def feed(self, data: bytes) -> int | None:
        end = len(data)
        if not end:
            return None
        if self._first:
            self._first = False
            if data[-1] == 0x0A:
                end -= 1  # the last line's own newline does not start another line
        while True:
            newline = data.rfind(b"\n", 0, end)
            if newline < 0:
                return None
            self._remaining -= 1
            if self._remaining == 0:
                return newline + 1
            end = newline
