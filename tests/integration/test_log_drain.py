"""Who drains a task's output when nobody is attached, and who cleans up after it.

A restart policy's new task and an actor restarted after a crash re-open (or create) FIFOs;
unless the log drains them straight away, a chatty container blocks on a full FIFO. A
container deleted by another client (``ctr c rm``) must not leave its log or staged binds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio

from actors.containerd._embedded import PrivateContainerd
from actors.control._binds import DEFAULT_STAGING_DIR, staged_entries
from actors.control.gateway_client import GatewayClient, connect_gateway
from actors.testing import crash_actor

from ..conftest import NAMESPACE, unique_id
from .gateway_support import Served, serve
from .test_gateway import _cli as cli
from .test_logs import _remove as remove

pytestmark = pytest.mark.integration

LINES = 40_000  # ~230 KB per run: far more than a FIFO holds, so an undrained run blocks
RUN_OUTPUT = b"".join(b"%d\n" % i for i in range(1, LINES + 1))


async def logged_in_full(served: Served, name: str, size: int) -> bytes:
    """``logs`` once it holds ``size`` bytes: the exit event may overtake the last bytes on
    their way through the shim and the FIFO (the caller then compares them whole)."""
    while True:
        logged = await cli(served, "logs", name)
        assert logged.returncode == 0, logged.stderr
        if len(logged.stdout) >= size:
            return logged.stdout
        await trio.sleep(0.1)


async def test_every_run_of_a_restarted_container_reaches_the_log_with_nobody_attached(
    served: Served, gw: GatewayClient
) -> None:
    name = unique_id("again")
    try:
        with trio.fail_after(120):
            done = await cli(served, "run", "-d", "--restart", "on-failure:3", "--name", name,
                             "busybox", "--", "sh", "-c", f"seq 1 {LINES}; exit 1")  # fmt: skip
            assert done.returncode == 0, done.stderr
            while True:
                state = await cli(served, "inspect", "-f",
                                  "{{.RestartCount}} {{.State.Status}}", name)  # fmt: skip
                if state.stdout == b"3 exited\n":
                    break
                await trio.sleep(0.1)
            logged = await logged_in_full(served, name, len(RUN_OUTPUT) * 4)
        assert logged == RUN_OUTPUT * 4
    finally:
        await remove(gw, name)


async def test_a_crashed_actor_hands_its_reopened_stdio_back_to_the_log(
    served: Served, gw: GatewayClient
) -> None:
    name = unique_id("crashed")
    script = f"seq 1 {LINES}; sleep 0.5; seq 1 {LINES}; sleep 0.5; seq 1 {LINES}"
    try:
        with trio.fail_after(120):
            done = await cli(served, "run", "-d", "--name", name, "busybox", "--",
                             "sh", "-c", script)  # fmt: skip
            assert done.returncode == 0, done.stderr
            restarts = served.client.statistics().actor_restarts
            await crash_actor(await served.client.load_container(name))
            while served.client.statistics().actor_restarts == restarts:
                await trio.sleep(0.01)
            await gw.call("task.wait", {"id": name})
            logged = await logged_in_full(served, name, len(RUN_OUTPUT) * 3)
        assert logged == RUN_OUTPUT * 3
    finally:
        await remove(gw, name)


# -- a container deleted behind our back leaves nothing of ours behind ----------------------


def ctr(daemon: PrivateContainerd, *args: str) -> str:
    return subprocess.run(
        ["ctr", "-a", daemon.address, "-n", NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as table:
        return any(line.split()[4] == path for line in table)


def staged(cid: str) -> list[str]:
    return [path for path, owner in staged_entries(DEFAULT_STAGING_DIR, NAMESPACE) if owner == cid]


async def test_a_container_removed_with_ctr_loses_its_log_and_staged_binds(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path, tmp_path: Path
) -> None:
    data = tmp_path / "binds" / "data"
    data.mkdir(parents=True)
    live, away = unique_id("ctrrm"), unique_id("ctraway")
    async with (
        serve(containerd, io_dir, rootfs, tmp_path) as served,
        connect_gateway(served.url, served.token) as gw,
    ):
        for name in (live, away):
            await gw.call(
                "container.create",
                {
                    "id": name,
                    "args": ["echo", "written"],
                    "mounts": [{"source": str(data), "destination": "/data"}],
                },
            )
            await gw.call("task.start", {"id": name})
            with trio.fail_after(30):
                await gw.call("task.wait", {"id": name})
            assert (await cli(served, "logs", name)).stdout == b"written\n"
            assert served.gateway.logs.directory(name).is_dir()
            assert len(staged(name)) == 1
        # Behind serve's back while it runs: it hears the delete and cleans up at once.
        ctr(containerd, "tasks", "rm", live)
        ctr(containerd, "containers", "rm", live)
        with trio.fail_after(30):
            while served.gateway.logs.directory(live).exists() or staged(live):
                await trio.sleep(0.05)
        log_root = served.gateway.logs.root
    # And while no serve runs: the next one removes the log it finds orphaned.
    ctr(containerd, "tasks", "rm", away)
    ctr(containerd, "containers", "rm", away)
    assert (log_root / away).is_dir()
    listed = ctr(containerd, "containers", "ls", "-q").split()
    orphans = [d.name for d in log_root.iterdir() if d.is_dir() and d.name not in listed]
    assert away in orphans
    [left] = staged(away)
    assert mounted(os.path.join(left, "0"))
    async with serve(containerd, io_dir, rootfs, tmp_path) as served:
        assert not served.gateway.logs.directory(away).exists()
        # Its staged binds too: named by namespace, so told apart from another serve's.
        assert staged(away) == []
        assert not os.path.exists(left)
        assert not mounted(os.path.join(left, "0"))
        # One Containers.Get per container the restore did not find (log and binds share
        # it), no more.
        assert served.client.statistics().rpc.calls.get("Containers.Get", 0) == len(orphans)


# -- exec output in the log: opt-in per container (--log-execs), off by default -------------


async def test_exec_output_reaches_the_log_only_when_the_container_asked(
    served: Served, gw: GatewayClient
) -> None:
    logged, plain = unique_id("execlog"), unique_id("execplain")
    try:
        with trio.fail_after(120):
            for name, flags in ((logged, ("--log-execs",)), (plain, ())):
                done = await cli(served, "run", "-d", "--name", name, *flags, "busybox", "--",
                                 "sh", "-c", "echo main; exec sleep 300")  # fmt: skip
                assert done.returncode == 0, done.stderr
                await logged_in_full(served, name, len(b"main\n"))
                ran = await cli(served, "exec", name, "--", "sh", "-c",
                                "seq 1 20000; echo oops >&2")  # fmt: skip
                assert ran.returncode == 0, ran.stderr
                assert ran.stdout == b"".join(b"%d\n" % i for i in range(1, 20001))
                assert ran.stderr == b"oops\n"
            everything = b"main\n" + b"".join(b"%d\n" % i for i in range(1, 20001))
            assert await logged_in_full(served, logged, len(everything)) == everything
            assert (await cli(served, "logs", logged)).stderr == b"oops\n"
            assert (await cli(served, "logs", plain)).stdout == b"main\n"
    finally:
        await remove(gw, logged)
        await remove(gw, plain)
