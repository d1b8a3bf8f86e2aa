"""A real ``serve`` process SIGKILLed while a container writes: its log has every line once.

The control plane drains each container's FIFOs into the log with splice(2) (nothing is
held in memory), and a restarted ``serve`` completes the record a kill interrupted from the
FIFO the shim kept. These tests kill the serve process (never the test process) at random
moments and, through a test-only fault seam, at exact points inside a record.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from actors.containerd._embedded import PrivateContainerd
from actors.control.gateway_client import GatewayClient, connect_gateway
from actors.core._logformat import tail_repair
from actors.core._logstore import CRASH_ENV

from ..conftest import unique_id
from .test_cli import REPO, read_until, remove

pytestmark = pytest.mark.integration


class ServeProcess:
    """``containerd-actors serve`` as its own process on one state directory."""

    def __init__(
        self, containerd: PrivateContainerd, state: Path, namespace: str, *flags: str
    ) -> None:
        self.containerd = containerd
        self.state = state
        self.namespace = namespace
        self.flags = flags
        self.url = ""

    @property
    def token(self) -> str:
        return (self.state / "token").read_text().strip()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        return {**env, "CONTAINERD_ACTORS_TOKEN": self.token, "CONTAINERD_ACTORS_URL": self.url}

    def log_dir(self, container_id: str) -> Path:
        return self.state / "logs" / self.namespace / container_id

    @asynccontextmanager
    async def running(self, crash: str | None = None) -> AsyncIterator[trio.Process]:
        """Start serve (optionally with the crash seam armed); SIGKILL it on the way out
        if it still runs (the caller may have killed it, or it killed itself)."""
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        if crash is not None:
            env[CRASH_ENV] = crash
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "supervisor",
                "--state-dir",
                str(self.state),
                "serve",
                "--address",
                self.containerd.address,
                "--namespace",
                self.namespace,
                "--listen",
                "127.0.0.1:0",
                *self.flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
        )
        try:
            assert proc.stdout is not None
            seen = bytearray()
            with trio.fail_after(120):
                await read_until(proc.stdout, b"stop with Ctrl-C", seen)
            match = re.search(rb"control plane: (ws://\S+)", seen)
            assert match is not None, seen
            self.url = match.group(1).decode()
            yield proc
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
                await proc.wait()
                if proc.stdout is not None:
                    await proc.stdout.aclose()

    async def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            [sys.executable, "-m", "supervisor", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=self.env(),
            cwd=REPO,
        )

    @asynccontextmanager
    async def gateway(self) -> AsyncIterator[GatewayClient]:
        async with connect_gateway(self.url, self.token) as gw:
            yield gw


def numbered(lines: int, per_burst: int, pause: str) -> str:
    """A shell script printing 1..lines in bursts, pausing between them (so kills land
    while it writes, and the writer outlives several serve restarts), then staying alive.

    It stays alive so that every kill lands on a running writer; a process that exits while
    serve is down has its own test below.
    """
    return (
        f"i=1; while [ $i -le {lines} ]; do seq $i $((i + {per_burst} - 1)); "
        f"i=$((i + {per_burst})); sleep {pause}; done; exec sleep 300"
    )


async def logged_in_full(served: ServeProcess, name: str, lines: int) -> bytes:
    """``logs`` once it holds as many bytes as 1..lines (then the caller compares them)."""
    want = len(expected(lines))
    with trio.fail_after(120):
        while True:
            logged = await served.cli("logs", name)
            assert logged.returncode == 0, logged.stderr
            assert logged.stderr == b""
            if len(logged.stdout) >= want:
                return logged.stdout
            await trio.sleep(0.1)


def expected(lines: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(1, lines + 1))


async def _task_status(gw: GatewayClient, name: str) -> str | None:
    task = (await gw.call("container.inspect", {"id": name}))["task"]
    return None if task is None else str(task["status"])


async def test_sigkill_of_serve_at_random_moments_loses_and_repeats_no_output(
    containerd: PrivateContainerd, tmp_path: Path
) -> None:
    lines, burst = 200_000, 4_000
    served = ServeProcess(containerd, tmp_path / "state", unique_id("crash"))
    name = unique_id("seq")
    rng = random.Random()
    try:
        async with served.running():
            done = await served.cli("run", "-d", "--name", name, "busybox", "--",
                                    "sh", "-c", numbered(lines, burst, "0.1"))  # fmt: skip
            assert done.returncode == 0, done.stderr
            await trio.sleep(rng.uniform(0.0, 0.5))
        for _kill in range(5):
            async with served.running() as proc:
                await trio.sleep(rng.uniform(0.0, 0.8))
                proc.send_signal(signal.SIGKILL)  # while the container writes
        async with served.running(), served.gateway() as gw:
            assert await _task_status(gw, name) == "running"
            logged = await logged_in_full(served, name, lines)
            assert logged == expected(lines), _first_difference(logged, lines)
    finally:
        async with served.running(), served.gateway() as gw:
            await remove(gw, name)


@pytest.mark.parametrize("point", ["after_header", "mid_splice", "before_trailer"])
async def test_a_kill_inside_a_record_is_completed_from_the_fifo_by_the_next_serve(
    containerd: PrivateContainerd, tmp_path: Path, point: str
) -> None:
    lines = 60_000
    served = ServeProcess(containerd, tmp_path / "state", unique_id("seam"))
    name = unique_id("rec")
    try:
        async with served.running():
            done = await served.cli("run", "-d", "--name", name, "busybox", "--",
                                    "sh", "-c", numbered(lines, 2_000, "0.05"))  # fmt: skip
            assert done.returncode == 0, done.stderr
        # The next serve re-attaches, drains on, and kills itself inside its 5th record.
        async with served.running(crash=f"{point}:5") as proc:
            with trio.fail_after(60):
                assert await proc.wait() == -signal.SIGKILL
        log_file = served.log_dir(name) / "log"
        size = log_file.stat().st_size
        with log_file.open("rb") as handle:
            plan = tail_repair(lambda offset, n: os.pread(handle.fileno(), n, offset), size)
        assert plan.length > 0 and plan.spliced  # a record cut short, as a kill leaves it
        if point == "before_trailer":
            assert plan.missing == 0
        else:
            assert plan.missing > 0  # those bytes are still in the FIFO
        async with served.running():
            logged = await logged_in_full(served, name, lines)
            assert logged == expected(lines), _first_difference(logged, lines)
    finally:
        async with served.running(), served.gateway() as gw:
            await remove(gw, name)


def _first_difference(got: bytes, lines: int) -> str:
    numbers = got.split(b"\n")
    for index, value in enumerate(numbers[:-1], start=1):
        if value != b"%d" % index:
            return f"line {index} is {value[:40]!r}; {len(numbers) - 1} lines in all"
    return f"{len(numbers) - 1} lines of {lines}"


async def test_output_left_in_the_fifo_by_a_process_that_exits_while_serve_is_down_is_kept(
    containerd: PrivateContainerd, tmp_path: Path
) -> None:
    """The shim closes its FIFO ends when the process's output ends; the FIFO keeper's
    reader keeps the bytes nobody read yet until the next serve drains them."""
    data = tmp_path / "binds" / "data"
    data.mkdir(parents=True)
    served = ServeProcess(
        containerd, tmp_path / "state", unique_id("exit"), "--bind-root", str(data.parent)
    )
    name = unique_id("last")
    first, last = 30_000, 35_000  # the last 5,000 lines (~34 KB) fit in the FIFO
    script = f"seq 1 {first}; while [ ! -e /data/go ]; do sleep 0.05; done; seq {first + 1} {last}"
    try:
        async with served.running() as proc:
            async with served.gateway() as gw:
                mount = {"source": str(data), "destination": "/data", "readonly": True}
                await gw.call(
                    "container.create",
                    {"id": name, "args": ["sh", "-c", script], "mounts": [mount]},
                )
                await gw.call("task.start", {"id": name})
            await logged_in_full(served, name, first)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        (data / "go").touch()  # the container writes its last lines and exits, unread
        with trio.fail_after(60):
            while name not in _stopped_tasks(served):
                await trio.sleep(0.1)
        async with served.running():
            logged = await logged_in_full(served, name, last)
            assert logged == expected(last), _first_difference(logged, last)
    finally:
        async with served.running(), served.gateway() as gw:
            await remove(gw, name)


def _stopped_tasks(served: ServeProcess) -> list[str]:
    listed = subprocess.run(
        ["ctr", "-a", served.containerd.address, "-n", served.namespace, "tasks", "ls"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    return [line.split()[0] for line in listed[1:] if "STOPPED" in line]
