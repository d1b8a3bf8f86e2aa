"""Replaying a log to a reader: batches, messages of many records, timestamps, following."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec
import trio
import trio.testing

from actors.control._gateway_logs import (
    MESSAGE_LIMIT,
    Stamper,
    log_chunks,
    send_log_frames,
)
from actors.core._logformat import LogRecord, LogStream
from actors.core._logstore import COALESCE_BYTES, LogConfig, LogReadOptions, LogStore

OUT, ERR = int(LogStream.STDOUT), int(LogStream.STDERR)


def _store(tmp_path: Path) -> LogStore:
    store = LogStore(tmp_path / "log", LogConfig(max_size=1 << 24))
    store.start_writing()
    return store


async def _chunks(store: LogStore, **options: object) -> list[tuple[int, bytes, int]]:
    reader = log_chunks(store, LogReadOptions(**options), timestamps=False)  # type: ignore[arg-type]
    async with contextlib.aclosing(reader) as chunks:
        return [chunk async for chunk in chunks]


class _Socket:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def send_message(self, message: bytes) -> None:
        self.messages.append(bytes(message))


async def test_batches_hold_the_same_records_in_order(tmp_path: Path) -> None:
    store = _store(tmp_path)
    pieces = [(OUT if i % 3 else ERR, os.urandom(100 + i)) for i in range(500)]
    for stream, data in pieces:
        store.append(stream, data)
    store.finish()
    async with contextlib.aclosing(store.read_batches(LogReadOptions())) as batches:
        got = [record async for batch in batches for record in batch]
    assert [(r.stream, r.data) for r in got] == pieces


async def test_small_records_of_a_stream_travel_together_and_streams_stay_apart(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    for index in range(2000):
        store.append(OUT, b"%d\n" % index)
    store.append(ERR, b"oops\n")
    store.append_gap(OUT, 7)
    store.append(OUT, b"after\n")
    store.finish()
    chunks = await _chunks(store)
    # Far fewer pieces than records, none over the limit, every byte in order, stderr and the
    # gap where they were written.
    assert len(chunks) < 20
    assert all(len(data) <= MESSAGE_LIMIT for _s, data, _d in chunks)
    assert b"".join(d for s, d, _ in chunks[:-3] if s == OUT) == b"".join(
        b"%d\n" % i for i in range(2000)
    )
    assert chunks[-3:] == [(ERR, b"oops\n", 0), (OUT, b"", 7), (OUT, b"after\n", 0)]


async def test_frames_carry_their_channel_and_the_drop_marker_in_place(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append(OUT, b"a" * 100)
    store.append(ERR, b"b" * 100)
    store.append_gap(ERR, 3)
    store.append(OUT, b"c" * (MESSAGE_LIMIT + 10))
    store.finish()
    socket = _Socket()
    await send_log_frames(socket, store, LogReadOptions())
    channels = [m[0] for m in socket.messages]
    assert channels[:3] == [1, 2, 3]
    assert socket.messages[0][1:] == b"a" * 100
    assert socket.messages[1][1:] == b"b" * 100
    status = msgspec.json.decode(socket.messages[2][1:])
    assert status["reason"] == "OutputDropped"
    assert status["details"]["causes"][0]["message"] == "3"
    assert set(channels[3:]) == {1}
    assert b"".join(m[1:] for m in socket.messages[3:]) == b"c" * (MESSAGE_LIMIT + 10)
    assert all(len(m) <= MESSAGE_LIMIT + 1 for m in socket.messages)


async def test_timestamped_short_lines_are_cut_into_bounded_messages(tmp_path: Path) -> None:
    # 64 KiB of empty lines gets a 31-byte prefix per line: 2 MiB, over a client's limit
    # for one message unless cut.
    store = _store(tmp_path)
    store.append(OUT, b"\n" * 65536, timestamp=1_700_000_000_123_456_789)
    store.finish()
    socket = _Socket()
    await send_log_frames(socket, store, LogReadOptions(), timestamps=True)
    assert all(len(m) <= MESSAGE_LIMIT + 1 for m in socket.messages)
    expected = Stamper().apply(LogRecord(OUT, 1_700_000_000_123_456_789, b"\n" * 65536))
    assert b"".join(m[1:] for m in socket.messages) == expected
    assert expected.startswith(b"2023-11-14T22:13:20.123456789Z \n")


def test_a_follower_woken_by_a_small_append_waits_for_more_before_reading(
    tmp_path: Path,
) -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        store = _store(tmp_path)
        batches: list[list[LogRecord]] = []

        async def follow() -> None:
            options = LogReadOptions(follow=True)
            async with contextlib.aclosing(store.read_batches(options)) as reader:
                async for batch in reader:
                    batches.append(batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            for index in range(10):  # each append wakes the follower
                store.append(OUT, b"line %d\n" % index)
                await trio.testing.wait_all_tasks_blocked()
            assert batches == []  # still waiting for more: the clock has not moved
            clock.jump(1)
            await trio.testing.wait_all_tasks_blocked()
            assert [len(batch) for batch in batches] == [10]
            # A read's worth waiting already is read at once.
            store.append(OUT, b"x" * COALESCE_BYTES)
            await trio.testing.wait_all_tasks_blocked()
            assert [len(batch) for batch in batches] == [10, 1]
            store.finish()  # the follower ends with the writer
        assert b"".join(r.data for b in batches for r in b).startswith(b"line 0\nline 1\n")

    trio.run(main, clock=clock)
