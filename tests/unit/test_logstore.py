"""The log store without containerd: codec, recovery, rotation, tail, since/until, follow."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from actors.core._logformat import (
    FLAG_SPLICED,
    HEADER_SIZE,
    MAX_PAYLOAD,
    RECORD_OVERHEAD,
    LogRecord,
    LogStream,
    TailCounter,
    TailRepair,
    decode_records,
    encode_gap,
    encode_header,
    encode_record,
    encode_trailer,
    record_before,
    tail_repair,
    valid_end,
)
from actors.core._logstore import LogConfig, LogReadOptions, LogStore
from actors.core.stdio import fifo_bytes

OUT, ERR = int(LogStream.STDOUT), int(LogStream.STDERR)


async def collect(store: LogStore, **options: object) -> list[LogRecord]:
    async with contextlib.aclosing(store.read(LogReadOptions(**options))) as records:  # type: ignore[arg-type]
        return [record async for record in records]


def text(records: list[LogRecord]) -> bytes:
    return b"".join(r.data for r in records)


# -- codec ----------------------------------------------------------------------------------


def test_records_round_trip_and_walk_backwards() -> None:
    encoded = (
        encode_record(OUT, 11, b"hello\n") + encode_record(ERR, 12, b"") + encode_gap(OUT, 13, 7)
    )
    decoded = [record for _end, record in decode_records(encoded)]
    assert decoded == [
        LogRecord(OUT, 11, b"hello\n"),
        LogRecord(ERR, 12, b""),
        LogRecord(OUT, 13, b"", 7),
    ]
    found = record_before(lambda o, n: encoded[o : o + n], len(encoded))
    assert found is not None and found[1] == LogRecord(OUT, 13, b"", 7)
    assert len(encode_record(OUT, 1, b"x" * 6)) == RECORD_OVERHEAD + 6


def test_large_payloads_are_split_into_bounded_records() -> None:
    data = os.urandom(MAX_PAYLOAD * 2 + 5)
    records = [r for _e, r in decode_records(encode_record(ERR, 5, data))]
    assert [len(r.data) for r in records if r] == [MAX_PAYLOAD, MAX_PAYLOAD, 5]
    assert b"".join(r.data for r in records if r) == data


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="stream"):
        encode_record(3, 0, b"x")
    with pytest.raises(ValueError, match="positive"):
        encode_gap(OUT, 0, 0)


def test_a_torn_or_corrupt_record_is_detected() -> None:
    good = encode_record(OUT, 1, b"one\n") + encode_record(OUT, 2, b"two\n")
    torn = good + encode_record(OUT, 3, b"three\n")[:-3]
    assert valid_end(lambda o, n: torn[o : o + n], len(torn)) == len(good)
    assert [r for _e, r in decode_records(torn)] == [
        LogRecord(OUT, 1, b"one\n"),
        LogRecord(OUT, 2, b"two\n"),
    ]
    flipped = bytearray(good)
    flipped[-10] ^= 0xFF  # inside the second record's payload: the CRC catches it
    assert valid_end(lambda o, n: bytes(flipped[o : o + n]), len(flipped)) == len(good) // 2
    assert [r for _e, r in decode_records(flipped)][-1] is None


def _spliced(stream: int, timestamp: int, data: bytes) -> bytes:
    header = encode_header(stream, FLAG_SPLICED, len(data), timestamp)
    return header + data + encode_trailer(header, data)


def _plan(data: bytes) -> TailRepair:
    return tail_repair(lambda o, n: data[o : o + n], len(data))


def test_tail_repair_finds_what_a_crash_cut_short() -> None:
    whole = encode_record(OUT, 1, b"one\n") + _spliced(ERR, 2, b"two\n")
    assert [r for _e, r in decode_records(whole)][-1] == LogRecord(ERR, 2, b"two\n")
    assert _plan(whole) == TailRepair(good=len(whole))
    assert _plan(b"") == TailRepair(good=0)
    record = _spliced(OUT, 7, b"0123456789")
    # Killed between header and splice: all ten bytes are still in stdout's FIFO.
    plan = _plan(whole + record[:HEADER_SIZE])
    assert (plan.good, plan.stream, plan.length, plan.have, plan.missing) == (
        len(whole),
        OUT,
        10,
        0,
        10,
    )
    assert plan.spliced and plan.timestamp == 7
    # Killed in the middle of the splice: 4 moved, 6 left in the FIFO.
    plan = _plan(whole + record[: HEADER_SIZE + 4])
    assert (plan.good, plan.have, plan.missing) == (len(whole), 4, 6)
    # Killed before the trailer (or in it): the payload is whole, only the trailer is due.
    for cut in (0, 3, 7):
        plan = _plan(whole + record[: HEADER_SIZE + 10 + cut])
        assert (plan.good, plan.length, plan.have, plan.missing) == (len(whole), 10, 10, 0)
    # A torn header: nothing of its payload left the FIFO; cut it.
    assert _plan(whole + record[:9]) == TailRepair(good=len(whole))
    # Not written by splice: the missing bytes are not in any FIFO (the caller reports them).
    plain = encode_record(ERR, 3, b"abcdef")
    plan = _plan(whole + plain[: HEADER_SIZE + 2])
    assert (plan.stream, plan.have, plan.missing, plan.spliced) == (ERR, 2, 4, False)
    # A whole record with a bad CRC is damage, not a crash; garbage is cut too.
    damaged = bytearray(record)
    damaged[HEADER_SIZE] ^= 0xFF
    assert _plan(whole + bytes(damaged)) == TailRepair(good=len(whole))
    assert _plan(whole + b"\x00" * 40) == TailRepair(good=len(whole))
    # A gap record is never completed (its payload is no output).
    assert _plan(whole + encode_gap(OUT, 1, 5)[:20]) == TailRepair(good=len(whole))


@pytest.mark.parametrize(
    ("chunks", "lines", "expected"),
    [
        ([b"a\nb\nc\n"], 1, b"c\n"),
        ([b"a\nb\nc\n"], 2, b"b\nc\n"),
        ([b"a\nb\nc"], 1, b"c"),  # an unterminated last line counts
        ([b"a\nb", b"\nc\n"], 2, b"b\nc\n"),  # a line split across records
        ([b"a\n", b"b\n", b"c\n"], 5, b"a\nb\nc\n"),  # fewer lines than asked: everything
        ([b"\n\n\n"], 2, b"\n\n"),
    ],
)
def test_tail_counts_lines_across_records(chunks: list[bytes], lines: int, expected: bytes) -> None:
    counter = TailCounter(lines)
    out = b""
    for chunk in reversed(chunks):
        cut = counter.feed(chunk)
        if cut is not None:
            out = chunk[cut:] + out
            break
        out = chunk + out
    assert out == expected


# -- the store ------------------------------------------------------------------------------


async def test_append_read_and_reopen_after_a_restart(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c1")
    store.start_writing()
    store.append(OUT, b"first\n", timestamp=100)
    store.append(ERR, b"oops\n", timestamp=200)
    store.finish()
    # A new process (a restart) appends to the same log.
    again = LogStore(tmp_path / "c1")
    assert text(await collect(again)) == b"first\noops\n"
    again.start_writing()
    again.append(OUT, b"second\n", timestamp=300)
    again.finish()
    records = await collect(again)
    assert [(r.stream, r.timestamp, r.data) for r in records] == [
        (OUT, 100, b"first\n"),
        (ERR, 200, b"oops\n"),
        (OUT, 300, b"second\n"),
    ]
    assert text(await collect(again, streams=frozenset({ERR}))) == b"oops\n"
    assert text(await collect(again, streams=frozenset({OUT}))) == b"first\nsecond\n"


async def test_a_torn_trailer_is_skipped_by_readers_and_rewritten_by_the_writer(
    tmp_path: Path,
) -> None:
    # The payload is whole; only the trailer is short: nothing is lost, the record is kept.
    store = LogStore(tmp_path / "c")
    store.start_writing()
    store.append(OUT, b"kept\n", timestamp=1)
    store.append(OUT, b"torn by the crash\n", timestamp=2)
    store.finish()
    path = tmp_path / "c" / "log"
    size = path.stat().st_size
    os.truncate(path, size - 5)
    after_crash = LogStore(tmp_path / "c")
    assert text(await collect(after_crash)) == b"kept\n"
    assert text(await collect(after_crash, tail=1)) == b"kept\n"
    after_crash.start_writing()
    assert path.stat().st_size == size
    stats = after_crash.statistics()
    assert (stats.recovered_bytes_discarded, stats.recovered_bytes_lost) == (0, 0)
    after_crash.append(OUT, b"next\n", timestamp=3)
    assert text(await collect(after_crash)) == b"kept\ntorn by the crash\nnext\n"
    after_crash.finish()


async def test_a_short_payload_written_from_memory_is_kept_and_the_rest_reported(
    tmp_path: Path,
) -> None:
    # A record append() wrote (its bytes were in the crashed writer's memory): what reached
    # the file stays, and the rest becomes a gap record, so readers are told.
    store = LogStore(tmp_path / "c")
    store.start_writing()
    store.append(OUT, b"kept\n", timestamp=1)
    store.append(ERR, b"0123456789", timestamp=2)
    store.finish()
    path = tmp_path / "c" / "log"
    os.truncate(path, path.stat().st_size - 8 - 6)  # trailer and 6 payload bytes
    after_crash = LogStore(tmp_path / "c")
    after_crash.start_writing()
    assert after_crash.statistics().recovered_bytes_lost == 6
    after_crash.finish()
    assert await collect(after_crash) == [
        LogRecord(OUT, 1, b"kept\n"),
        LogRecord(ERR, 2, b"0123"),
        LogRecord(ERR, 2, b"", 6),
    ]


async def test_garbage_at_the_end_is_cut_too(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c")
    store.start_writing()
    store.append(OUT, b"one\n", timestamp=1)
    store.finish()
    with (tmp_path / "c" / "log").open("ab") as handle:
        handle.write(b"\x00garbage that is no record at all" * 3)
    store.start_writing()
    store.append(OUT, b"two\n", timestamp=2)
    store.finish()
    assert text(await collect(store)) == b"one\ntwo\n"


async def test_rotation_keeps_max_files_and_readers_see_everything_kept(tmp_path: Path) -> None:
    config = LogConfig(max_size=4096, max_files=3)
    store = LogStore(tmp_path / "c", config)
    store.start_writing()
    lines = [f"line {i:05d}\n".encode() for i in range(2000)]  # 22 KB: several rotations
    for number, line in enumerate(lines):
        store.append(OUT, line, timestamp=number)
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert files == ["log", "log.1", "log.2"]
    assert all(p.stat().st_size <= config.max_size for p in (tmp_path / "c").iterdir())
    kept = text(await collect(store))
    assert len(kept) <= 3 * config.max_size
    assert kept == b"".join(lines)[-len(kept) :]  # the newest bytes, in order, nothing torn
    assert kept.startswith(b"line ")
    assert text(await collect(store, tail=3)) == b"".join(lines[-3:])
    assert store.statistics().rotations > 2
    store.finish()


async def test_no_file_outgrows_max_size_even_with_large_writes(tmp_path: Path) -> None:
    config = LogConfig(max_size=8192, max_files=2)
    store = LogStore(tmp_path / "c", config)
    store.start_writing()
    data = os.urandom(100_000)
    store.append(OUT, data, timestamp=1)
    assert all(p.stat().st_size <= config.max_size for p in (tmp_path / "c").iterdir())
    kept = text(await collect(store))
    assert data.endswith(kept) and len(kept) > config.max_size
    store.finish()


async def test_one_file_only_truncates_on_rotation(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c", LogConfig(max_size=4096, max_files=1))
    store.start_writing()
    for number in range(1000):
        store.append(OUT, b"%d\n" % number, timestamp=number)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["log"]
    assert text(await collect(store, tail=1)) == b"999\n"
    store.finish()


async def test_tail_since_and_until(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c")
    store.start_writing()
    store.append(OUT, b"a\nb\n", timestamp=10)
    store.append(ERR, b"E1\n", timestamp=20)
    store.append(OUT, b"c\nd", timestamp=30)  # a partial line...
    store.append(OUT, b"d\ne\n", timestamp=40)  # ...completed by the next record
    store.finish()
    assert text(await collect(store, tail=0)) == b""
    assert text(await collect(store, tail=1)) == b"e\n"
    assert text(await collect(store, tail=2)) == b"dd\ne\n"
    assert text(await collect(store, tail=3)) == b"c\ndd\ne\n"
    assert text(await collect(store, tail=2, streams=frozenset({ERR}))) == b"E1\n"
    assert text(await collect(store, since=20)) == b"E1\nc\ndd\ne\n"
    assert text(await collect(store, until=20)) == b"a\nb\nE1\n"
    assert text(await collect(store, since=20, until=30)) == b"E1\nc\nd"


async def test_followers_wake_on_append_and_end_when_the_writer_finishes(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c", LogConfig(max_size=4096, max_files=4))
    store.start_writing()
    store.append(OUT, b"before\n", timestamp=1)
    results: dict[str, bytes] = {}

    async def follower(name: str, tail: int | None) -> None:
        results[name] = text(await collect(store, follow=True, tail=tail))

    expected = b"before\n" + b"".join(b"%06d\n" % i for i in range(1000))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower, "all", None)
            nursery.start_soon(follower, "new", 0)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(1000):  # 7 KB: the followers cross rotations
                store.append(OUT, b"%06d\n" % i, timestamp=2 + i)
                if i % 100 == 0:
                    await trio.testing.wait_all_tasks_blocked()
            store.finish()
    assert results["all"] == expected
    assert results["new"] == expected[len(b"before\n") :]


async def test_follow_on_a_stopped_log_prints_it_and_returns(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c")
    store.start_writing()
    store.append(OUT, b"done\n", timestamp=1)
    store.finish()
    with trio.fail_after(5):
        assert text(await collect(store, follow=True)) == b"done\n"


async def test_a_follower_too_far_behind_is_told_what_rotated_away(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c", LogConfig(max_size=4096, max_files=2))
    store.start_writing()
    store.append(OUT, b"x" * 100, timestamp=1)
    got: list[LogRecord] = []
    async with contextlib.aclosing(store.read(LogReadOptions(follow=True))) as records:
        with trio.fail_after(5):
            got.append(await records.__anext__())
            for i in range(300):  # 30 KB without reading: most files rotate away
                store.append(OUT, b"y" * 100, timestamp=2 + i)
            store.finish()
            got.extend([record async for record in records])
    lost = sum(r.dropped for r in got)
    assert lost > 0
    data = text(got)
    assert data.startswith(b"x" * 100)
    # What arrived plus what was reported lost covers (about) everything: record framing
    # is counted in the lost figure, so it errs on the side of "more was lost".
    assert len(data) + lost >= 100 + 300 * 100


async def test_gap_records_reach_readers(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c")
    store.start_writing()
    store.append(OUT, b"a\n", timestamp=1)
    store.append_gap(OUT, 4096, timestamp=2)
    store.append(OUT, b"b\n", timestamp=3)
    store.finish()
    records = await collect(store)
    assert [r.dropped for r in records] == [0, 4096, 0]


async def test_remove_deletes_the_files_and_ends_followers(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c")
    store.start_writing()
    store.append(OUT, b"x\n", timestamp=1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, store)
            nursery.start_soon(lambda: collect(store, follow=True))
            await trio.testing.wait_all_tasks_blocked()
            store.remove()
    assert not (tmp_path / "c").exists()
    assert store.statistics().readers == 0
    with pytest.raises(RuntimeError, match="removed"):
        store.start_writing()


def test_bad_config_and_options_are_refused() -> None:
    with pytest.raises(ValueError, match="max_size"):
        LogConfig(max_size=10)
    with pytest.raises(ValueError, match="max_files"):
        LogConfig(max_files=0)
    with pytest.raises(ValueError, match="tail"):
        LogReadOptions(tail=-1)
    with pytest.raises(ValueError, match="streams"):
        LogReadOptions(streams=frozenset({5}))


async def test_a_failed_write_leaves_no_torn_record_and_the_retry_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogStore(tmp_path / "c")
    store.start_writing()
    store.append(OUT, b"before\n", timestamp=1)
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: object, offset: int) -> int:
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        written = real_pwrite(fd, bytes(data)[:10], offset)  # type: ignore[call-overload]
        assert written == 10
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(OSError, match="No space"):
        store.append(OUT, b"during\n", timestamp=2)
    store.append(OUT, b"during\n", timestamp=2)  # the retry
    store.finish()
    assert text(await collect(store)) == b"before\nduring\n"


# -- splicing from a FIFO, and completing what a crash interrupted --------------------------


@contextlib.contextmanager
def fifo(tmp_path: Path, name: str) -> Iterator[tuple[int, int]]:
    """(our non-blocking reader, the writer) of a real FIFO."""
    path = tmp_path / name
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        yield reader, writer
    finally:
        os.close(reader)
        os.close(writer)


def fionread(fd: int) -> int:
    return fifo_bytes(fd)


async def test_append_from_fifo_moves_exactly_what_the_fifo_holds(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c")
    store.start_writing()
    with fifo(tmp_path, "out") as (reader, writer), fifo(tmp_path, "err") as (ereader, ewriter):
        os.write(writer, b"hello\n")
        os.write(ewriter, b"oops\n")
        assert store.append_from_fifo(OUT, reader, fionread(reader)) == 6
        assert store.append_from_fifo(ERR, ereader, fionread(ereader)) == 5
        os.write(writer, b"x" * 50_000)
        assert store.append_from_fifo(OUT, reader, fionread(reader)) == 50_000
        assert fionread(reader) == fionread(ereader) == 0
    store.finish()
    records = await collect(store)
    assert [(r.stream, r.data) for r in records] == [
        (OUT, b"hello\n"),
        (ERR, b"oops\n"),
        (OUT, b"x" * 50_000),
    ]
    assert store.statistics().bytes_written == 50_011


async def test_append_from_fifo_rotates_and_splits_at_the_size_limit(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "c", LogConfig(max_size=4096, max_files=10))
    store.start_writing()
    with fifo(tmp_path, "out") as (reader, writer):
        os.write(writer, b"y" * 10_000)
        while available := fionread(reader):
            store.append_from_fifo(OUT, reader, available)
    store.finish()
    assert text(await collect(store)) == b"y" * 10_000
    assert all(path.stat().st_size <= 4096 for path in store.files())
    assert len(store.files()) > 2


@pytest.mark.parametrize("cut", ["after_header", "mid_splice", "before_trailer", "torn_trailer"])
async def test_a_record_a_kill_interrupted_is_completed_from_its_fifo(
    tmp_path: Path, cut: str
) -> None:
    """Crafted crash states of a spliced record: the missing bytes are still at the head of
    the FIFO; the next writer moves exactly those in, then what follows goes on as usual."""
    directory = tmp_path / "c"
    with fifo(tmp_path, "out") as (reader, writer), fifo(tmp_path, "err") as (ereader, ewriter):
        store = LogStore(directory)
        store.start_writing()
        store.append(ERR, b"before\n", timestamp=1)
        store.finish()
        # What the killed writer left: the header for 10 bytes, and some of them moved.
        os.write(writer, b"0123456789" + b"after\n")
        header = encode_header(OUT, FLAG_SPLICED, 10, 2)
        moved = {"after_header": 0, "mid_splice": 4, "before_trailer": 10, "torn_trailer": 10}
        with (directory / "log").open("ab") as handle:
            handle.write(header + os.read(reader, moved[cut]))
            if cut == "torn_trailer":
                handle.write(encode_trailer(header, b"0123456789")[:3])
        os.write(ewriter, b"err later\n")
        again = LogStore(directory)
        again.start_writing({OUT: reader, ERR: ereader})
        stats = again.statistics()
        assert (stats.recovered_bytes_completed, stats.recovered_bytes_lost) == (10 - moved[cut], 0)
        assert fionread(reader) == len(b"after\n")  # exactly the missing bytes were taken
        assert fionread(ereader) == len(b"err later\n")  # the other stream untouched
        again.append_from_fifo(OUT, reader, fionread(reader))
        again.append_from_fifo(ERR, ereader, fionread(ereader))
        again.finish()
    records = await collect(again)
    assert [(r.stream, r.data) for r in records] == [
        (ERR, b"before\n"),
        (OUT, b"0123456789"),
        (OUT, b"after\n"),
        (ERR, b"err later\n"),
    ]
    assert records[1].timestamp == 2


async def test_a_record_whose_fifo_is_gone_keeps_what_it_has_and_reports_the_rest(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "c"
    store = LogStore(directory)
    store.start_writing()
    store.finish()
    header = encode_header(OUT, FLAG_SPLICED, 10, 5)
    with (directory / "log").open("ab") as handle:
        handle.write(header + b"0123")
    # A new process's FIFO (or none) is not where those six bytes are: they are lost, said so.
    again = LogStore(directory)
    again.start_writing()
    assert again.statistics().recovered_bytes_lost == 6
    again.finish()
    assert await collect(again) == [LogRecord(OUT, 5, b"0123"), LogRecord(OUT, 5, b"", 6)]
    # Nothing moved at all: nothing kept, the whole announced length reported.
    with (directory / "log").open("ab") as handle:
        handle.write(encode_header(ERR, FLAG_SPLICED, 7, 6))
    third = LogStore(directory)
    third.start_writing()
    third.finish()
    assert (await collect(third))[-1] == LogRecord(ERR, 6, b"", 7)


async def test_a_failed_splice_is_completed_by_the_next_append_of_that_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogStore(tmp_path / "c")
    store.start_writing()
    real_pwrite = os.pwrite
    with fifo(tmp_path, "out") as (reader, writer), fifo(tmp_path, "err") as (ereader, ewriter):
        os.write(writer, b"0123456789")
        os.write(ewriter, b"e\n")

        def no_room_for_the_trailer(fd: int, data: object, offset: int) -> int:
            if len(data) == 8:  # type: ignore[arg-type]
                raise OSError(28, "No space left on device")
            return real_pwrite(fd, data, offset)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "pwrite", no_room_for_the_trailer)
        with pytest.raises(OSError, match="No space"):
            store.append_from_fifo(OUT, reader, fionread(reader))
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        assert fionread(reader) == 0  # the bytes are in the file, and only there
        with pytest.raises(OSError, match="other stream"):
            store.append_from_fifo(ERR, ereader, fionread(ereader))  # waits its turn
        os.write(writer, b"more\n")
        assert store.append_from_fifo(OUT, reader, fionread(reader)) == 0  # completes first
        assert store.append_from_fifo(OUT, reader, fionread(reader)) == 5
        assert store.append_from_fifo(ERR, ereader, fionread(ereader)) == 2
    store.finish()
    assert [(r.stream, r.data) for r in await collect(store)] == [
        (OUT, b"0123456789"),
        (OUT, b"more\n"),
        (ERR, b"e\n"),
    ]
