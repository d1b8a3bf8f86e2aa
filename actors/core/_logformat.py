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
(lossy mode only).
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
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "RECORD_OVERHEAD",
    "TRAILER_SIZE",
    "LogRecord",
    "LogStream",
    "TailCounter",
    "decode_records",
    "encode_gap",
    "encode_record",
    "record_before",
    "valid_end",
]

MAGIC: Final = 0xCA1E
FLAG_GAP: Final = 0x01
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


def _frame(stream: int, flags: int, timestamp: int, payload: bytes) -> bytes:
    header = _HEADER.pack(MAGIC, stream, flags, len(payload), timestamp)
    crc = zlib.crc32(payload, zlib.crc32(header))
    return header + payload + _TRAILER.pack(crc, len(payload))


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
