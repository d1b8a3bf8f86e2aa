"""The FIFO keeper keeps a FIFO's bytes alive when every other process closed it."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trio

from actors.control._fifokeeper import FifoKeeper, watch_keeper


def _wait_for(predicate: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the keeper did not get there in time"
        time.sleep(0.05)


def _keeper_pid(socket_path: Path) -> int:
    """The keeper serving ``socket_path`` (its command line names the socket)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"_fifokeeper_main.py") for a in argv) and (
                os.fsencode(socket_path) in argv
            ):
                return int(entry.name)
    raise AssertionError("no keeper runs for " + str(socket_path))


def test_a_held_fifo_keeps_its_bytes_for_the_next_reader_and_is_let_go_once_drained(
    tmp_path: Path,
) -> None:
    socket_path = tmp_path / "keeper.sock"
    # Whether the keeper sees the hang-up before or after the next reader drains the FIFO,
    # it lets go: at once when empty, else on a sweep (short here).
    keeper = FifoKeeper(socket_path, sweep_seconds=0.2)
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # serve's reader
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the shim's
    try:
        keeper.connect()
        assert keeper.hold(str(fifo), reader)
        os.write(writer, b"the last words")
    finally:
        os.close(writer)  # the process ended ...
        os.close(reader)  # ... while serve was gone
    keeper.close()
    again = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the next serve
    try:
        assert os.read(again, 100) == b"the last words"
    finally:
        os.close(again)
    # Drained, no writer, nobody connected: the keeper lets go and exits.
    _wait_for(lambda: not socket_path.exists())


def test_a_removed_fifo_is_let_go_and_a_second_keeper_defers_to_the_first(
    tmp_path: Path,
) -> None:
    socket_path = tmp_path / "keeper.sock"
    # A FIFO removed under a live writer is only found by the sweep: a short one here.
    first = FifoKeeper(socket_path, sweep_seconds=0.2)
    second = FifoKeeper(socket_path)
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        first.connect()
        second.connect()  # the same keeper: a second would have exited at once
        assert first.hold(str(fifo), reader)
        os.write(writer, b"unread")
    finally:
        os.close(reader)
    first.close()
    second.close()
    os.unlink(fifo)  # the process was deleted: its FIFO removed, the bytes wanted by nobody
    _wait_for(lambda: not socket_path.exists())
    os.close(writer)


async def test_without_a_keeper_hold_returns_false_and_the_watcher_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A socket path that cannot be bound (its directory is a file): no keeper can start.
    (tmp_path / "file").write_text("")
    keeper = FifoKeeper(tmp_path / "file" / "keeper.sock")
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises((OSError, subprocess.SubprocessError)):
            keeper.connect()
        assert keeper.hold(str(fifo), reader) is False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    watch_keeper, keeper, {str(fifo): lambda: reader}, retry_seconds=0.01
                )
            )
            with trio.fail_after(20):
                while "no FIFO keeper" not in caplog.text:
                    await trio.sleep(0.01)
            await trio.sleep(0.1)  # several more failed starts ...
            nursery.cancel_scope.cancel()
        assert caplog.text.count("no FIFO keeper") == 1  # ... said once
        assert not keeper.connected
    finally:
        os.close(reader)


async def test_a_killed_keeper_is_replaced_and_handed_every_drained_fifo_again(
    tmp_path: Path,
) -> None:
    socket_path = tmp_path / "keeper.sock"
    keeper = FifoKeeper(socket_path, sweep_seconds=0.2)
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # serve's drain
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the shim's
    drained = {str(fifo): lambda: reader}
    try:
        await trio.to_thread.run_sync(keeper.connect)
        assert keeper.hold(str(fifo), reader)
        first = _keeper_pid(socket_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_keeper, keeper, drained)
            os.kill(first, signal.SIGKILL)  # what it held dies with it
            with trio.fail_after(20):
                while keeper.held < 2:
                    await trio.sleep(0.05)
            assert _keeper_pid(socket_path) != first
            nursery.cancel_scope.cancel()
        os.write(writer, b"kept by the second keeper")
    finally:
        keeper.close()  # serve is gone ...
        os.close(writer)  # ... when the process ends
        os.close(reader)
    again = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the next serve
    try:
        assert os.read(again, 100) == b"kept by the second keeper"
    finally:
        os.close(again)
