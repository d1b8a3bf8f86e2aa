"""OutputPipe without containerd: backpressure by default, lossy only when asked, and told."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from actors import OutputMode, OutputPipe


@contextmanager
def pipe_pair(
    limit: int, mode: OutputMode = OutputMode.BLOCKING
) -> Iterator[tuple[OutputPipe, int]]:
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    pipe = OutputPipe("test", read_fd, limit=limit, mode=mode)
    try:
        yield pipe, write_fd
    finally:
        pipe.close()
        os.close(write_fd)


def fill(write_fd: int) -> int:
    """Write until the kernel pipe is full (our reader is not reading); bytes written."""
    written = 0
    while True:
        try:
            written += os.write(write_fd, b"x" * 4096)
        except BlockingIOError:
            return written


async def until(predicate: object) -> None:
    with trio.fail_after(10):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.001)


async def test_blocking_mode_stops_reading_at_the_limit_and_resumes_when_drained() -> None:
    with pipe_pair(limit=1000) as (pipe, write_fd):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.pump)
            os.write(write_fd, bytes(range(256)) * 8)  # 2048 bytes
            await until(lambda: pipe.blocked)
            assert pipe.buffered == pipe.total_bytes == 1000
            # The rest stays in the pipe: a writer that keeps going fills it and blocks.
            assert fill(write_fd) < 65536
            got = await pipe.receive_some(600)
            assert got == (bytes(range(256)) * 8)[:600]
            await until(lambda: pipe.total_bytes > 1000)
            assert pipe.dropped_bytes == 0
            nursery.cancel_scope.cancel()


async def test_every_byte_arrives_in_order_through_a_small_buffer() -> None:
    data = os.urandom(300_000)
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    pipe = OutputPipe("test", read_fd, limit=4096)
    received = bytearray()
    async with pipe, trio.open_nursery() as nursery:
        nursery.start_soon(pipe.pump)

        async def writer() -> None:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(write_fd, view[:8192]) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(write_fd)
            os.close(write_fd)

        nursery.start_soon(writer)
        with trio.fail_after(10):
            while chunk := await pipe.receive_some(1000):
                received += chunk
    assert bytes(received) == data
    assert pipe.dropped_bytes == 0


async def test_lossy_mode_drops_the_oldest_and_marks_the_gap() -> None:
    with pipe_pair(limit=1000, mode=OutputMode.LOSSY) as (pipe, write_fd):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.pump)
            os.write(write_fd, b"a" * 1500 + b"b" * 500)
            await until(lambda: pipe.total_bytes == 2000)
            assert not pipe.blocked
            first = await pipe.receive_chunk(100)
            assert first.dropped_before == 1000 == pipe.dropped_bytes
            assert first.data == b"a" * 100
            second = await pipe.receive_chunk()
            assert second.dropped_before == 0  # reported once, where it happened
            assert second.data == b"a" * 400 + b"b" * 500
            os.write(write_fd, b"c" * 1200)
            await until(lambda: pipe.total_bytes == 3200)
            third = await pipe.receive_chunk()
            assert (third.dropped_before, third.data) == (200, b"c" * 1000)
            nursery.cancel_scope.cancel()


async def test_switching_a_blocked_pipe_to_lossy_drains_it() -> None:
    with pipe_pair(limit=100) as (pipe, write_fd):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.pump)
            os.write(write_fd, b"z" * 300)
            await until(lambda: pipe.blocked)
            pipe.configure(mode=OutputMode.LOSSY)
            await until(lambda: pipe.total_bytes == 300)
            chunk = await pipe.receive_chunk()
            assert (chunk.dropped_before, len(chunk.data)) == (200, 100)
            nursery.cancel_scope.cancel()


async def test_close_wakes_a_blocked_pump_and_readers_get_closed() -> None:
    with pipe_pair(limit=10) as (pipe, write_fd):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.pump)
            os.write(write_fd, b"q" * 50)
            await until(lambda: pipe.blocked)
            pipe.close()
            await until(lambda: pipe.eof)
        assert await pipe.receive_some() == b"q" * 10  # what we already held stays readable
        with pytest.raises(trio.ClosedResourceError):
            await pipe.receive_some()


def test_bad_limits_are_refused() -> None:
    read_fd, write_fd = os.pipe()
    try:
        for bad in (0, -1):
            with pytest.raises(ValueError, match="positive integer"):
                OutputPipe("x", read_fd, limit=bad)
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_a_reopened_fifo_reaches_eof_once_the_process_is_known_to_have_exited(
    tmp_path: Path,
) -> None:
    # The restart case: the writer was there before our reader opened, so poll(2) will
    # never report POLLHUP to our reader when that writer closes.
    path = tmp_path / "fifo"
    os.mkfifo(path)
    keeper = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the shim's own reader
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    ours = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    os.write(writer, b"last words\n")
    pipe = OutputPipe(str(path), ours)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.pump)
            assert await pipe.receive_some() == b"last words\n"
            os.close(writer)
            pipe.mark_exited()
            with trio.fail_after(10):
                assert await pipe.receive_some() == b""
            assert pipe.eof
    finally:
        pipe.close()
        os.close(keeper)


async def test_paused_reading_leaves_output_in_the_fifo_for_the_next_consumer() -> None:
    with pipe_pair(limit=1000) as (pipe, write_fd):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.pump)
            os.write(write_fd, b"first")
            await until(lambda: pipe.total_bytes == 5)
            pipe.pause_reading()
            os.write(write_fd, b"second")
            await trio.testing.wait_all_tasks_blocked()
            assert pipe.total_bytes == 5  # still in the kernel's pipe
            assert await pipe.receive_some() == b"first"
            pipe.resume_reading()
            assert await pipe.receive_some() == b"second"
            nursery.cancel_scope.cancel()


# -- a claimant that moves bytes itself (the control plane's log) ----------------------------


async def test_a_claimed_pipe_is_left_to_its_claimant_and_reports_eof(tmp_path: Path) -> None:
    with pipe_pair(limit=1000) as (pipe, write_fd):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.pump)
            os.write(write_fd, b"read early")
            await until(lambda: pipe.total_bytes == 10)
            closing: list[int] = []
            assert pipe.claim(lambda: closing.append(1)) == b"read early"  # the caller's now
            with pytest.raises(trio.BusyResourceError):
                pipe.claim()
            os.write(write_fd, b"left in the fifo")
            with trio.fail_after(10):
                assert await pipe.wait_fifo() == 16
            await trio.testing.wait_all_tasks_blocked()
            assert pipe.total_bytes == 10  # the pump did not touch it
            with pytest.raises(trio.BusyResourceError):
                await pipe.receive_some()
            assert os.read(pipe.fileno(), 100) == b"left in the fifo"
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, write_fd)  # the writer goes (the number stays for pipe_pair)
            os.close(devnull)
            with trio.fail_after(10):
                assert await pipe.wait_fifo() == 0
            assert pipe.eof
            nursery.cancel_scope.cancel()
        pipe.close()
        assert closing == [1]  # the claimant's last chance ran before the fd closed
    with (
        pipe_pair(limit=10, mode=OutputMode.LOSSY) as (lossy, _write_fd),
        pytest.raises(ValueError, match="blocking"),
    ):
        lossy.claim()


async def test_a_reopened_fifo_is_read_by_nobody_until_asked_and_a_claimant_sees_eof(
    tmp_path: Path,
) -> None:
    # After a restart the FIFO may still hold what a crash left: nothing reads it before its
    # consumer decides how, and a claimant sees EOF even though the writer was there first.
    path = tmp_path / "fifo"
    os.mkfifo(path)
    keeper = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the shim's own reader
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, b"still here\n")
    os.close(writer)  # the process ended while nobody read
    held = OutputPipe(str(path), os.open(path, os.O_RDONLY | os.O_NONBLOCK), reopened=True)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(held.pump)
            await trio.testing.wait_all_tasks_blocked()
            assert held.total_bytes == 0
            assert held.claim() == b""
            with trio.fail_after(10):
                assert await held.wait_fifo() == 11
            assert os.read(held.fileno(), 100) == b"still here\n"
            with trio.fail_after(10):
                assert await held.wait_fifo() == 0
            nursery.cancel_scope.cancel()
    finally:
        held.close()
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, b"for a reader\n")
    reader = OutputPipe(str(path), os.open(path, os.O_RDONLY | os.O_NONBLOCK), reopened=True)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.pump)
            await trio.testing.wait_all_tasks_blocked()
            assert reader.total_bytes == 0
            with trio.fail_after(10):
                assert await reader.receive_some() == b"for a reader\n"  # asking releases it
            nursery.cancel_scope.cancel()
    finally:
        reader.close()
        os.close(writer)
        os.close(keeper)
