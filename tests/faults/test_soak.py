"""Soak: 1,000 lifecycles with execs and stdio under the supervisor, then count leaks.

Afterwards our process has exactly the open file descriptors, threads and Trio tasks it had
after warm-up, no FIFO file remains, containerd lists nothing, and RSS grew by less than
RSS_GROWTH_BOUND. SOAK_LIFECYCLES overrides the count (e.g. for a quick local run).
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import pytest
import trio

from actors import Client, build_spec
from actors.containerd._embedded import PrivateContainerd
from supervisor import open_supervisor

from .conftest import FaultReport, leftovers, open_fds, trio_task_count

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = "ca-soak"
RSS_GROWTH_BOUND = 32 * 1024 * 1024


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def lifecycle(client: Client, rootfs: Path, index: int) -> None:
    spec = build_spec(rootfs, ["sh", "-c", "read line; echo got $line"])
    container = await client.new_container(f"soak-{os.getpid()}-{index}", spec)
    task = await container.start(with_stdin=True)
    proc = await task.exec("probe", container.exec_spec(["sh", "-c", "echo exec-out"]))
    assert proc.io is not None
    assert proc.io.stdout is not None
    assert await proc.io.stdout.read_all() == b"exec-out\n"
    assert (await proc.wait()).code == 0
    await proc.delete()
    assert task.io is not None
    assert task.io.stdin is not None
    assert task.io.stdout is not None
    await task.io.stdin.send_all(b"x\n")
    await task.close_stdin()
    assert await task.io.stdout.read_all() == b"got x\n"
    assert (await task.wait()).code == 0
    await task.delete()
    await container.delete()


async def test_soak_leaks_nothing(
    daemon: PrivateContainerd, rootfs: Path, state: str, fault_report: FaultReport
) -> None:
    total = int(os.environ.get("SOAK_LIFECYCLES", "1000"))
    async with open_supervisor(daemon.address, NS, state_dir=state) as client:
        limiter = trio.CapacityLimiter(8)

        async def bounded(index: int) -> None:
            async with limiter:
                await lifecycle(client, rootfs, index)

        async def run(first: int, count: int) -> None:
            async with trio.open_nursery() as nursery:
                for index in range(first, first + count):
                    nursery.start_soon(bounded, index)

        with trio.fail_after(120):
            await run(0, 20)  # warm-up: imports, caches, the bridge's thread pool
        gc.collect()
        await trio.sleep(0.5)
        baseline = (open_fds(), threading.active_count(), trio_task_count())
        rss_before = rss()
        start = trio.current_time()
        done = 0
        with trio.fail_after(1200):
            while done < total:
                batch = min(100, total - done)
                await run(20 + done, batch)
                done += batch
                elapsed = trio.current_time() - start
                print(f"soak: {done}/{total} lifecycles, {done / elapsed:.1f}/s")
        gc.collect()
        await trio.sleep(0.5)
        after = (open_fds(), threading.active_count(), trio_task_count())
        growth = rss() - rss_before
        fault_report.count("soak lifecycles", total)
        fault_report.count("soak RSS growth (bytes)", growth)
        fault_report.count("soak fd delta", after[0] - baseline[0])
        fault_report.count("soak thread delta", after[1] - baseline[1])
        fault_report.count("soak Trio task delta", after[2] - baseline[2])
        # fds and Trio tasks exactly as before; threads may only shrink (Trio's worker-thread
        # cache retires idle threads).
        assert (after[0], after[2]) == (baseline[0], baseline[2]), f"{baseline} -> {after}"
        assert after[1] <= baseline[1], f"threads {baseline[1]} -> {after[1]}"
        assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
        assert client.statistics().actors == 0
    assert leftovers(daemon, NS, Path(state)) == []
