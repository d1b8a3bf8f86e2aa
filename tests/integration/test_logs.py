"""Container output through the real control plane: nothing lost, logs like docker's.

Everything here runs against the real containerd, the real gateway over loopback websockets
and the real command line (a subprocess), as a user would.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

import pytest
import trio

from actors.containerd._embedded import PrivateContainerd
from actors.control._logopts import parse_size, parse_time
from actors.control.gateway_client import GatewayClient, connect_gateway

from ..conftest import unique_id
from .gateway_support import Served, serve
from .test_gateway import _cli

pytestmark = pytest.mark.integration

SEQ = 3_000_000
SEQ_OUTPUT = b"".join(b"%d\n" % i for i in range(1, SEQ + 1))


async def _run_detached(
    served: Served, name: str, *command: str, opts: tuple[str, ...] = ()
) -> None:
    done = await _cli(served, "run", "-d", "--name", name, *opts, "busybox", "--", *command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == name.encode()


async def _remove(gw: GatewayClient, name: str) -> None:
    """Kill (if running), delete the task and the container."""
    with trio.CancelScope(shield=True):
        task = (await gw.call("container.inspect", {"id": name}))["task"]
        if task is not None:
            if task["status"] != "stopped":
                await gw.call("task.kill", {"id": name, "signal": "KILL"})
            await gw.call("task.wait", {"id": name})
            await gw.call("task.delete", {"id": name})
        await gw.call("container.delete", {"id": name})


async def test_run_prints_four_megabytes_of_binary_byte_for_byte(served: Served) -> None:
    # The data goes to stdout and its checksum, computed inside the container, to stderr.
    script = "exec 3>&1; head -c 4000000 /dev/urandom | tee /dev/fd/3 | sha256sum >&2"
    with trio.fail_after(120):
        done = await _cli(served, "run", "--rm", "busybox", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr[-500:]
    assert len(done.stdout) == 4_000_000
    assert done.stderr.split()[0].decode() == hashlib.sha256(done.stdout).hexdigest()


async def test_run_and_logs_print_seq_whole_and_readers_agree(
    served: Served, gw: GatewayClient
) -> None:
    with trio.fail_after(300):
        ran = await _cli(served, "run", "--rm", "busybox", "--", "seq", "1", str(SEQ))
        assert ran.returncode == 0, ran.stderr[-500:]
        assert ran.stdout == SEQ_OUTPUT  # every line, in order, no hole

        name = unique_id("seq")
        await _run_detached(served, name, "seq", "1", str(SEQ))
        assert (await gw.call("task.wait", {"id": name}))["code"] == 0
        results: dict[int, subprocess.CompletedProcess[bytes]] = {}

        async def reader(index: int) -> None:
            results[index] = await _cli(served, "logs", name)

        async with trio.open_nursery() as nursery:  # two readers at once
            nursery.start_soon(reader, 0)
            nursery.start_soon(reader, 1)
        for result in results.values():
            assert result.returncode == 0, result.stderr
            assert result.stdout == SEQ_OUTPUT
        again = await _cli(served, "logs", name)  # reading does not consume
        assert again.stdout == SEQ_OUTPUT
        tail = await _cli(served, "logs", "--tail", "3", name)
        assert tail.stdout == b"2999998\n2999999\n3000000\n"
        assert (await _cli(served, "logs", "--tail", "0", name)).stdout == b""
        await _remove(gw, name)
    # Removed with the container.
    assert (await _cli(served, "logs", name)).returncode == 125


async def test_logs_since_until_timestamps_and_streams_apart(
    served: Served, gw: GatewayClient
) -> None:
    name = unique_id("since")
    await gw.call(
        "container.create",
        {"id": name, "args": ["sh", "-c", "echo first; echo oops >&2; read x; echo second"]},
    )
    try:
        await gw.call("task.start", {"id": name, "stdin": True})
        with trio.fail_after(60):
            while b"first\n" not in (await _cli(served, "logs", name)).stdout:
                await trio.sleep(0.05)
            between = time.time_ns()
            async with gw.attach(name) as session:
                await session.send_stdin(b"go\n")
                await session.close_stdin()
                seen = b"".join([data async for _channel, data in session.output()])
            assert seen == b"second\n"  # attach shows what comes after it
            assert session.exit_code == 0
            stamp = f"{between // 10**9}.{between % 10**9:09d}"
            since = await _cli(served, "logs", "--since", stamp, name)
            until = await _cli(served, "logs", "--until", stamp, name)
        assert since.stdout == b"second\n"
        assert until.stdout == b"first\n"
        assert until.stderr == b"oops\n"  # stdout and stderr stay apart
        stamped = await _cli(served, "logs", "-t", name)
        lines = stamped.stdout.decode().splitlines()
        assert len(lines) == 2
        for line, text in zip(lines, ("first", "second"), strict=True):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z " + text, line), line
        bad = await _cli(served, "logs", "--since", "yesterday-ish", name)
        assert bad.returncode == 125
        assert b"invalid time" in bad.stderr
    finally:
        await _remove(gw, name)


async def test_logs_follow_ends_with_the_container(served: Served, gw: GatewayClient) -> None:
    name = unique_id("follow")
    await gw.call(
        "container.create", {"id": name, "args": ["sh", "-c", "echo a; read x; echo b; exit 4"]}
    )
    try:
        await gw.call("task.start", {"id": name, "stdin": True})
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                result: list[subprocess.CompletedProcess[bytes]] = []

                async def follow() -> None:
                    result.append(await _cli(served, "logs", "-f", name))

                nursery.start_soon(follow)
                while served.gateway.statistics().stdio_sessions < 1:
                    await trio.sleep(0.05)
                async with gw.attach(name) as session:
                    await session.send_stdin(b"x\n")
                    await session.close_stdin()
                    async for _channel, _data in session.output():
                        pass
        assert result[0].returncode == 0, result[0].stderr
        assert result[0].stdout == b"a\nb\n"
    finally:
        await _remove(gw, name)


async def test_logs_and_events_fail_loudly_when_serve_goes_away(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path, tmp_path: Path
) -> None:
    name = unique_id("gone")
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}
    # The commands outlive serve: the nursery around it waits for them to end.
    with trio.fail_after(120):
        async with trio.open_nursery() as outer:  # noqa: SIM117
            async with serve(containerd, io_dir, rootfs, tmp_path) as served:
                async with connect_gateway(served.url, served.token) as gw:
                    await gw.call("container.create", {"id": name, "args": ["sleep", "300"]})
                    await gw.call("task.start", {"id": name})

                async def cli(key: str, *args: str) -> None:
                    results[key] = await _cli(served, *args)

                outer.start_soon(cli, "logs", "logs", "-f", name)
                outer.start_soon(cli, "events", "events")
                with trio.fail_after(30):
                    while (
                        served.gateway.statistics().stdio_sessions < 1
                        # the gateway's own event log is one subscriber; `events` the next
                        or served.client.statistics().subscribers.subscribers < 2
                    ):
                        await trio.sleep(0.05)
            # serve is gone now; both commands must notice and fail.
    for key in ("logs", "events"):
        assert results[key].returncode == 1, (key, results[key].stderr)
        assert b"went away" in results[key].stderr
    async with (
        serve(containerd, io_dir, rootfs, tmp_path) as served,
        connect_gateway(served.url, served.token) as gw,
    ):
        await _remove(gw, name)


async def test_logs_survive_a_serve_restart_and_restore_keeps_appending(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path, tmp_path: Path
) -> None:
    stopped, ticking = unique_id("stopped"), unique_id("tick")
    async with serve(containerd, io_dir, rootfs, tmp_path) as served:
        await _run_detached(served, stopped, "sh", "-c", "echo hello; echo world")
        await _run_detached(
            served, ticking, "sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done"
        )
        async with connect_gateway(served.url, served.token) as gw:
            await gw.call("task.wait", {"id": stopped})
        with trio.fail_after(30):
            while len((await _cli(served, "logs", ticking)).stdout.split()) < 5:
                await trio.sleep(0.05)
        before = len((await _cli(served, "logs", ticking)).stdout.split())
    # serve is down; the ticker keeps writing into its FIFO (then blocks).
    async with (
        serve(containerd, io_dir, rootfs, tmp_path) as served,
        connect_gateway(served.url, served.token) as gw,
    ):
        try:
            with trio.fail_after(60):
                assert (await _cli(served, "logs", stopped)).stdout == b"hello\nworld\n"
                follow = await _cli(served, "logs", "-f", stopped)  # stopped: prints, ends
                assert (follow.returncode, follow.stdout) == (0, b"hello\nworld\n")
                while True:
                    numbers = [int(n) for n in (await _cli(served, "logs", ticking)).stdout.split()]
                    if len(numbers) > before + 5:
                        break
                    await trio.sleep(0.05)
            # Appended to the same log, with nothing lost across the restart.
            assert numbers == list(range(len(numbers)))
        finally:
            await _remove(gw, stopped)
            await _remove(gw, ticking)


async def test_rotation_keeps_the_configured_number_of_files(
    served: Served, gw: GatewayClient
) -> None:
    name = unique_id("rot")
    opts = ("--log-max-size", "64k", "--log-max-files", "3")
    await _run_detached(served, name, "seq", "1", "100000", opts=opts)  # 589 KB of output
    try:
        with trio.fail_after(60):
            assert (await gw.call("task.wait", {"id": name}))["code"] == 0
            logs = await _cli(served, "logs", name)
        directory = served.gateway.logs.directory(name)
        files = sorted(p.name for p in directory.iterdir() if p.name.startswith("log"))
        assert files == ["log", "log.1", "log.2"]
        assert all((directory / f).stat().st_size <= 64 * 1024 for f in files)
        kept = logs.stdout
        assert 0 < len(kept) <= 3 * 64 * 1024
        assert b"".join(b"%d\n" % i for i in range(1, 100_001)).endswith(kept)
        assert (await _cli(served, "logs", "--tail", "1", name)).stdout == b"100000\n"
    finally:
        await _remove(gw, name)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def test_output_nobody_reads_goes_to_disk_not_memory(
    served: Served, gw: GatewayClient
) -> None:
    name = unique_id("quiet")
    size = 64 * 1024 * 1024
    baseline = _rss()
    await _run_detached(served, name, "sh", "-c", f"head -c {size} /dev/zero")
    try:
        with trio.fail_after(300):
            assert (await gw.call("task.wait", {"id": name}))["code"] == 0
        directory = served.gateway.logs.directory(name)
        on_disk = sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("log"))
        # The default rotation keeps 5 x 20 MiB: the newest bytes are on disk...
        assert on_disk >= 60 * 1024 * 1024
        # ...and the gateway held at most a buffer's worth of them in memory.
        assert _rss() - baseline < 24 * 1024 * 1024
        assert served.gateway.logs.statistics().bytes_written >= size
    finally:
        await _remove(gw, name)


async def test_lossy_mode_reports_its_drops(served: Served, gw: GatewayClient) -> None:
    lossy = ("--log-mode", "lossy", "--log-buffer-size", "1")
    with trio.fail_after(120):
        # A one-byte buffer drops nearly everything: the user is told, and the exit fails.
        warned = await _cli(
            served, "run", "--rm", *lossy, "busybox", "--", "sh", "-c", "yes | head -c 1000000"
        )
        assert warned.returncode == 1
        assert b"bytes of output were dropped" in warned.stderr
        dropped = int(re.search(rb"warning: (\d+) bytes", warned.stderr).group(1))  # type: ignore[union-attr]
        assert 0 < dropped <= 1_000_000
        assert len(warned.stdout) + dropped == 1_000_000  # what arrived + what was reported
        allowed = await _cli(
            served,
            "run",
            "--rm",
            *lossy,
            "--allow-dropped",
            "busybox",
            "--",
            "sh",
            "-c",
            "yes | head -c 100000; exit 3",
        )
        assert allowed.returncode == 3  # the container's own code, with a warning
        assert b"dropped" in allowed.stderr


def test_size_and_time_parsing() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("64k") == 65536
    assert parse_size("20M") == 20 << 20
    assert parse_size("1g") == 1 << 30
    with pytest.raises(ValueError, match="invalid size"):
        parse_size("lots")
    now = 1_764_601_445_000_000_000
    assert parse_time("1764601445", now_ns=now) == now
    assert parse_time("1764601445.5", now_ns=now) == now + 500_000_000
    assert parse_time("10m", now_ns=now) == now - 600 * 10**9
    assert parse_time("1h30m", now_ns=now) == now - 5400 * 10**9
    assert parse_time("2025-12-01T15:04:05Z", now_ns=now) == 1764601445 * 10**9
    assert parse_time("2025-12-01T16:04:05.25+01:00", now_ns=now) == 1764601445 * 10**9 + 25 * 10**7
    with pytest.raises(ValueError, match="invalid time"):
        parse_time("soon", now_ns=now)


def _rpc_calls(served: Served) -> dict[str, int]:
    return dict(served.client.statistics().rpc.calls)


async def test_the_log_costs_no_rpc_start_and_reads_are_local(
    served: Served, gw: GatewayClient
) -> None:
    name = unique_id("rpcs")
    await gw.call("container.create", {"id": name, "args": ["sh", "-c", "echo one; echo two"]})
    try:
        before = _rpc_calls(served)
        await gw.call("task.start", {"id": name})
        after = _rpc_calls(served)
        started = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        assert started == {"Tasks.Create": 1, "Tasks.Start": 1}  # draining adds nothing
        await gw.call("task.wait", {"id": name})
        before = _rpc_calls(served)
        with trio.fail_after(30):
            async with gw.logs(name, tail=1) as session:
                got = b"".join([data async for _channel, data in session.output()])
        assert got == b"two\n"
        assert session.ended
        assert _rpc_calls(served) == before  # a log read never asks containerd
    finally:
        await _remove(gw, name)


async def test_exec_output_is_whole_too(served: Served, gw: GatewayClient) -> None:
    name = unique_id("execout")
    await gw.call("container.create", {"id": name, "args": ["sleep", "300"]})
    try:
        await gw.call("task.start", {"id": name})
        with trio.fail_after(120):
            done = await _cli(served, "exec", name, "--", "seq", "1", "1000000")
        assert done.returncode == 0, done.stderr[-300:]
        assert done.stdout == SEQ_OUTPUT[: len(b"".join(b"%d\n" % i for i in range(1, 1_000_001)))]
    finally:
        await _remove(gw, name)
