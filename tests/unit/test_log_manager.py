"""The control plane's log drain over real FIFOs, without containerd."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import trio
import trio.testing

from actors.control._gateway_logs import LogManager
from actors.core._logstore import LogReadOptions
from actors.core.stdio import DirectIO, FifoSet


async def test_the_drain_splices_both_streams_and_settles_only_at_their_end(
    tmp_path: Path,
) -> None:
    manager = LogManager(tmp_path / "logs" / "ns", keep_fifos=False)
    fifos = FifoSet.for_process(tmp_path / "io", "c1", stdin=False, terminal=False)
    io = DirectIO.open(fifos)
    # The shim's ends, opened once ours exist.
    out = os.open(fifos.stdout, os.O_WRONLY | os.O_NONBLOCK)
    err = os.open(fifos.stderr, os.O_WRONLY | os.O_NONBLOCK)
    settled: list[bool] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            manager.drain("c1", io)
            assert all(pipe.claimed for pipe in io.pipes())
            os.write(out, b"one\n")
            os.write(err, b"oops\n")

            async def wait_settled() -> None:
                await manager.settled("c1")
                settled.append(True)

            nursery.start_soon(wait_settled)
            await trio.testing.wait_all_tasks_blocked()
            assert settled == []  # the writers are still there: more may come
            os.write(out, b"two\n")
            os.close(out)
            os.close(err)
            out = err = -1
            with trio.fail_after(10):
                while not settled:
                    await trio.sleep(0.01)
            assert manager.statistics().bytes_written == 13
            nursery.cancel_scope.cancel()
    finally:
        for fd in (out, err):
            if fd >= 0:
                os.close(fd)
        io.close()
    store = manager.store("c1")
    assert not store.writing
    async with contextlib.aclosing(store.read(LogReadOptions())) as records:
        got = [(r.stream, r.data) async for r in records]
    assert sorted(got) == [(1, b"one\n"), (1, b"two\n"), (2, b"oops\n")]
    assert [data for stream, data in got if stream == 1] == [b"one\n", b"two\n"]
