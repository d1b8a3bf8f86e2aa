"""The docker-like command line, run as a subprocess against a real gateway and containerd."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import Client, NotFound, open_client
from actors.containerd._embedded import PrivateContainerd
from actors.control._policy import SpecPolicy
from actors.control.gateway import Gateway, GatewayConfig
from actors.control.gateway_client import GatewayClient, connect_gateway

from ..conftest import NAMESPACE, unique_id

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    client: Client
    gateway: Gateway
    url: str
    token: str

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERD_ACTORS_TOKEN": self.token,
            "CONTAINERD_ACTORS_URL": self.url,
            **extra,
        }


@pytest.fixture
async def served(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path, tmp_path: Path
) -> AsyncIterator[Served]:
    token = secrets.token_urlsafe(32)
    policy = SpecPolicy(default_rootfs=str(rootfs), allowed_rootfs_roots=(str(rootfs),))
    files = str(tmp_path / "files")
    async with (
        open_client(containerd.address, NAMESPACE, state_dir=str(io_dir)) as client,
        trio.open_nursery() as nursery,
    ):
        config = GatewayConfig(token=token, policy=policy, port=0, files_dir=files)
        gateway = Gateway(client, config)
        await nursery.start(gateway.serve)
        yield Served(client, gateway, f"ws://127.0.0.1:{gateway.port}", token)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def gw(served: Served) -> AsyncIterator[GatewayClient]:
    async with connect_gateway(served.url, served.token) as client:
        yield client


async def cli(
    served: Served, *args: str, stdin: bytes = b"", **env: str
) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "supervisor", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=served.env(**env),
        cwd=REPO,
    )


@asynccontextmanager
async def spawn(served: Served, *args: str, **options: Any) -> AsyncIterator[trio.Process]:
    """The CLI as a running process (killed if the test leaves it running)."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "supervisor", *args], env=served.env(), cwd=REPO, **options
    )
    try:
        yield proc
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def remove(gw: GatewayClient, cid: str) -> None:
    """Best-effort cleanup of a container a test created."""
    try:
        info = await gw.call("container.inspect", {"id": cid})
    except NotFound:
        return
    if info["task"] is not None:
        if info["task"]["status"] != "stopped":
            await gw.call("task.kill", {"id": cid, "signal": "KILL", "all": True})
            await gw.call("task.wait", {"id": cid})
        await gw.call("task.delete", {"id": cid})
    await gw.call("container.delete", {"id": cid})


async def gone(gw: GatewayClient, cid: str) -> bool:
    try:
        await gw.call("container.inspect", {"id": cid})
    except NotFound:
        return True
    return False


async def read_until(stream: Any, marker: bytes, seen: bytearray) -> None:
    while marker not in seen:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"stream ended before {marker!r}: {bytes(seen)!r}")
        seen += chunk


# -- 1. signals ------------------------------------------------------------------------------


async def test_sigint_reaches_the_container_trap_and_rm_removes_it(
    served: Served, gw: GatewayClient
) -> None:
    cid = unique_id("sig")
    script = 'trap "echo got INT; exit 7" INT; echo ready; while true; do sleep 0.1; done'
    with trio.fail_after(60):
        async with spawn(
            served, "run", "--rm", "--name", cid, "busybox", "--", "sh", "-c", script,
            stdout=subprocess.PIPE,
        ) as proc:  # fmt: skip
            assert proc.stdout is not None
            seen = bytearray()
            await read_until(proc.stdout, b"ready\n", seen)
            proc.send_signal(signal.SIGINT)
            await read_until(proc.stdout, b"got INT\n", seen)
            assert await proc.wait() == 7
        assert await gone(gw, cid)


async def test_sig_proxy_false_leaves_the_container_running(
    served: Served, gw: GatewayClient
) -> None:
    cid = unique_id("noproxy")
    script = 'trap "exit 7" INT; echo ready; while true; do sleep 0.1; done'
    try:
        with trio.fail_after(60):
            async with spawn(
                served, "run", "--sig-proxy=false", "--name", cid, "busybox", "--", "sh", "-c",
                script, stdout=subprocess.PIPE,
            ) as proc:  # fmt: skip
                assert proc.stdout is not None
                await read_until(proc.stdout, b"ready\n", bytearray())
                proc.send_signal(signal.SIGINT)
                assert await proc.wait() == 130
            info = await gw.call("container.inspect", {"id": cid})
            assert info["task"]["status"] == "running"
    finally:
        await remove(gw, cid)


# -- 2. foreground exits are kept; -d --rm is removed by the server ---------------------------


async def test_foreground_run_keeps_the_exit_for_ps_inspect_and_wait(
    served: Served, gw: GatewayClient
) -> None:
    cid = unique_id("keep")
    try:
        with trio.fail_after(60):
            done = await cli(served, "run", "--name", cid, "busybox", "--", "sh", "-c", "exit 5")
            assert done.returncode == 5
            listed = await cli(served, "ps", "-a", "--filter", f"id={cid}")
            assert listed.returncode == 0
            lines = listed.stdout.decode().splitlines()
            assert lines[0].split() == [
                "CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"
            ]  # fmt: skip
            assert "Exited (5)" in lines[1] and "ago" in lines[1] and "busybox" in lines[1]
            running_only = await cli(served, "ps", "-q")
            assert cid not in running_only.stdout.decode().split()
            code = await cli(served, "inspect", "-f", "{{.State.ExitCode}}", cid)
            assert code.stdout == b"5\n"
            waited = await cli(served, "wait", cid)
            assert waited.stdout == b"5\n"
            again = await cli(served, "start", cid)
            assert again.returncode == 0, again.stderr
            assert (await gw.call("task.wait", {"id": cid}))["code"] == 5
    finally:
        await remove(gw, cid)


async def test_detached_rm_is_removed_by_the_server_when_it_exits(
    served: Served, gw: GatewayClient
) -> None:
    cid = unique_id("autorm")
    with trio.fail_after(60):
        async with gw.subscribe({"container": [cid], "event": ["die"]}) as events:
            done = await cli(
                served, "run", "-d", "-i", "--rm", "--name", cid, "busybox", "--", "sh", "-c",
                "read x; exit 0",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert (await gw.call("container.inspect", {"id": cid}))["auto_remove"] is True
            await gw.call("task.kill", {"id": cid, "signal": "KILL"})
            await events.receive()
        while not await gone(gw, cid):
            await trio.sleep(0.05)


# -- 3. terminals ----------------------------------------------------------------------------


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@asynccontextmanager
async def on_pty(served: Served, *args: str) -> AsyncIterator[tuple[trio.Process, Any]]:
    master, slave = os.openpty()
    _set_size(slave, 24, 80)
    try:
        async with spawn(
            served, *args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        ) as proc:
            os.close(slave)
            slave = -1
            async with trio.lowlevel.FdStream(os.dup(master)) as terminal:
                yield proc, terminal
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)


async def test_terminal_size_follows_a_resize(served: Served, gw: GatewayClient) -> None:
    cid = unique_id("tty")
    try:
        with trio.fail_after(60):
            async with on_pty(served, "run", "-it", "--name", cid, "busybox", "--", "sh") as (
                proc,
                terminal,
            ):
                seen = bytearray()
                # Typed before the CLI turns raw mode on, input would be flushed.
                await read_until(terminal, b"/ # ", seen)
                await terminal.send_all(b"stty size\r")
                await read_until(terminal, b"24 80", seen)
                _set_size(terminal.fileno(), 30, 100)
                proc.send_signal(signal.SIGWINCH)
                while b"30 100" not in seen:
                    await terminal.send_all(b"stty size\r")
                    with trio.move_on_after(1):
                        await read_until(terminal, b"30 100", seen)
                await terminal.send_all(b"exit 3\r")
                assert await proc.wait() == 3
    finally:
        await remove(gw, cid)


async def test_detach_keys_leave_the_container_running(served: Served, gw: GatewayClient) -> None:
    cid = unique_id("detach")
    try:
        with trio.fail_after(60):
            async with on_pty(served, "run", "-it", "--name", cid, "busybox", "--", "sh") as (
                proc,
                terminal,
            ):
                await read_until(terminal, b"/ # ", bytearray())
                await terminal.send_all(b"echo hi-there\r")
                await read_until(terminal, b"hi-there\r\n", bytearray())
                await terminal.send_all(b"\x10\x11")
                assert await proc.wait() == 0
            info = await gw.call("container.inspect", {"id": cid})
            assert info["task"]["status"] == "running"
            async with on_pty(served, "attach", "--detach-keys", "ctrl-a,a", cid) as (
                proc,
                terminal,
            ):
                # No new prompt on attach: wait for raw mode (the CLI's stty) by echoing.
                seen = bytearray()
                # (the shell's output line, not the local echo of the typed command)
                while b"\nagain\r\n" not in seen:
                    await terminal.send_all(b"echo again\r")
                    with trio.move_on_after(1):
                        await read_until(terminal, b"\nagain\r\n", seen)
                await terminal.send_all(b"\x01a")
                assert await proc.wait() == 0
            info = await gw.call("container.inspect", {"id": cid})
            assert info["task"]["status"] == "running"
    finally:
        await remove(gw, cid)


async def test_piped_stdin_with_tty_is_refused_like_docker(served: Served) -> None:
    with trio.fail_after(30):
        done = await cli(served, "run", "-it", "--rm", "busybox", "--", "true", stdin=b"x\n")
    assert done.returncode == 1
    assert b"the input device is not a TTY" in done.stderr


# -- 4. verbs --------------------------------------------------------------------------------


async def test_stop_escalates_to_sigkill_after_the_timeout(
    served: Served, gw: GatewayClient
) -> None:
    stubborn, polite = unique_id("stubborn"), unique_id("polite")
    try:
        with trio.fail_after(60):
            # PID 1 without a handler ignores SIGTERM: only the SIGKILL after -t ends it.
            assert (await cli(served, "run", "-d", "--name", stubborn, "busybox", "--",
                              "sleep", "300")).returncode == 0  # fmt: skip
            trap = "trap 'exit 4' TERM; while true; do sleep 0.1; done"
            assert (await cli(served, "run", "-d", "--name", polite, "busybox", "--",
                              "sh", "-c", trap)).returncode == 0  # fmt: skip
            done = await cli(served, "stop", "-t", "1", stubborn, polite)
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode().split() == [stubborn, polite]
            assert (await gw.call("task.wait", {"id": stubborn}))["code"] == 137
            assert (await gw.call("task.wait", {"id": polite}))["code"] == 4
            restarted = await cli(served, "restart", "-t", "0", polite)
            assert restarted.returncode == 0, restarted.stderr
            info = await gw.call("container.inspect", {"id": polite})
            assert info["task"]["status"] == "running"
    finally:
        await remove(gw, stubborn)
        await remove(gw, polite)


async def test_kill_goes_on_past_a_missing_container(served: Served, gw: GatewayClient) -> None:
    first, second = unique_id("ka"), unique_id("kb")
    try:
        with trio.fail_after(60):
            for cid in (first, second):
                await cli(served, "run", "-d", "--name", cid, "busybox", "--", "sleep", "300")
            done = await cli(served, "kill", first, "nosuch-container", second)
            assert done.returncode == 1
            assert done.stdout.decode().split() == [first, second]
            assert b"nosuch-container" in done.stderr
            for cid in (first, second):
                assert (await gw.call("task.wait", {"id": cid}))["code"] == 137
    finally:
        await remove(gw, first)
        await remove(gw, second)


async def test_pause_top_inspect_and_cp(served: Served, gw: GatewayClient, tmp_path: Path) -> None:
    cid = unique_id("verbs")
    try:
        with trio.fail_after(90):
            assert (await cli(served, "run", "-d", "--name", cid, "-l", "team=a", "busybox",
                              "--", "sleep", "300")).returncode == 0  # fmt: skip
            assert (await cli(served, "pause", cid)).returncode == 0
            listed = await cli(served, "ps", "--filter", "label=team=a", "--filter",
                               f"name={cid}")  # fmt: skip
            assert "(Paused)" in listed.stdout.decode()
            assert (await cli(served, "unpause", cid)).returncode == 0
            top = await cli(served, "top", cid)
            assert top.stdout.decode().splitlines()[0].split() == [
                "UID",
                "PID",
                "PPID",
                "STIME",
                "CMD",
            ]
            assert "sleep 300" in top.stdout.decode()
            inspected = await cli(served, "inspect", cid)
            [shape] = json.loads(inspected.stdout)
            assert shape["State"]["Status"] == "running"
            assert shape["State"]["Running"] is True
            assert shape["Config"]["Labels"] == {"team": "a"}
            assert shape["Config"]["Cmd"] == ["sleep", "300"]
            assert shape["Config"]["Hostname"] == cid
            assert shape["Created"].endswith("Z")
            # Host -> container -> host through the container's tar.
            source = tmp_path / "in.txt"
            source.write_bytes(b"payload\n")
            put = await cli(served, "cp", str(source), f"{cid}:/tmp/")
            assert put.returncode == 0, put.stderr
            got = await cli(served, "cp", f"{cid}:/tmp/in.txt", str(tmp_path / "out.txt"))
            assert got.returncode == 0, got.stderr
            assert (tmp_path / "out.txt").read_bytes() == b"payload\n"
            missing = await cli(served, "cp", f"{cid}:/no/such", str(tmp_path / "x"))
            assert missing.returncode == 1
            assert not (tmp_path / "x").exists()
    finally:
        await remove(gw, cid)


# -- 5. flags --------------------------------------------------------------------------------


async def test_env_user_memory_hostname_and_exec_flags(
    served: Served, gw: GatewayClient, tmp_path: Path
) -> None:
    cid = unique_id("flags")
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=yes\n\n")
    script = 'echo "$COPIED|$UNSET_ONE|$FROM_FILE|$(id -u):$(id -g)|$(hostname)"; sleep 300'
    try:
        with trio.fail_after(60):
            done = await cli(
                served, "run", "-d", "--name", cid, "-e", "COPIED", "-e", "UNSET_ONE",
                "--env-file", str(env_file), "-u", "1000:1001", "-m", "64m",
                "--hostname", "box", "busybox", "--", "sh", "-c", script,
                COPIED="from-caller",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            info = await gw.call("container.inspect", {"id": cid})
            assert info["memory_limit"] == 64 << 20
            assert "UNSET_ONE" not in " ".join(info["env"])
            out = await cli(
                served,
                "exec",
                cid,
                "--",
                "sh",
                "-c",
                "cat /proc/1/environ | tr '\\0' '\\n' | grep -c COPIED=from-caller",
            )
            assert out.stdout == b"1\n"
            execd = await cli(served, "exec", "-e", "X=1", "-w", "/tmp", "-u", "0", cid, "--",
                              "sh", "-c", 'echo "$X $(pwd) $(id -u)"')  # fmt: skip
            assert execd.stdout == b"1 /tmp 0\n", execd.stderr
            detached = await cli(served, "exec", "-d", cid, "--", "touch", "/tmp/bg")
            assert detached.returncode == 0 and detached.stdout == b""
            while (await cli(served, "exec", cid, "--", "test", "-e", "/tmp/bg")).returncode:
                await trio.sleep(0.05)
            identity = await cli(served, "exec", cid, "--", "hostname")
            assert identity.stdout == b"box\n"
    finally:
        await remove(gw, cid)


async def test_run_output_shows_env_and_user(served: Served) -> None:
    with trio.fail_after(30):
        done = await cli(
            served, "run", "--rm", "-e", "COPIED", "-e", "NOT_SET_HERE", "-u", "1000",
            "busybox", "--", "sh", "-c", 'echo "$COPIED|${NOT_SET_HERE-unset}|$(id -u)"',
            COPIED="v",
        )  # fmt: skip
    assert done.stdout == b"v|unset|1000\n", done.stderr


# -- 9. errors that say what is wrong --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["run", "--name", "bad name!", "busybox", "--", "true"],
            b"Invalid container name (bad name!)",
        ),
        (
            ["run", "-w", "relative", "busybox", "--", "true"],
            b"'relative' is invalid, it needs to be an absolute path",
        ),
        (["kill", "-s", "BOGUS", "whatever"], b"invalid signal 'BOGUS'"),
        (["events", "--filter", "event=destroy"], b"unknown event 'destroy'"),
        (["run", "-m", "lots", "busybox"], b"invalid value 'lots' for --memory"),
        (["run", "--init", "busybox", "--", "true"], b"--init is not supported"),
        (["run", "-u", "nobody", "busybox", "--", "true"], b"unable to find user nobody"),
        (["frobnicate"], b"invalid choice: 'frobnicate'"),
    ],
)
async def test_errors_name_the_bad_argument(
    served: Served, args: list[str], expected: bytes
) -> None:
    with trio.fail_after(30):
        done = await cli(served, *args)
    assert expected in done.stderr, done.stderr
    assert done.returncode in (1, 125)
    if args[0] != "kill":
        assert done.returncode == 125


async def test_server_side_invalid_params_carry_field_and_reason(
    served: Served, gw: GatewayClient
) -> None:
    with pytest.raises(Exception, match=r"Invalid params: env\[0\]: .*KEY=VALUE.* \(-32602\)"):
        await gw.call("container.create", {"id": unique_id("p"), "args": ["true"], "env": ["BAZ"]})
    with pytest.raises(Exception, match=r"signal: invalid signal 'BOGUS'"):
        await gw.call("task.kill", {"id": "x", "signal": "BOGUS"})


async def test_connect_deadline_for_silent_listeners_and_wss_to_plain(served: Served) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (kernel backlog) but never answers
    port = listener.getsockname()[1]
    try:
        with trio.fail_after(30):
            silent = await cli(served, "--url", f"ws://127.0.0.1:{port}", "--timeout", "1", "ps")
            assert silent.returncode == 125
            assert b"within 1 s" in silent.stderr
            tls = await cli(served, "--url", served.url.replace("ws://", "wss://"), "--timeout",
                            "1", "ps")  # fmt: skip
            assert tls.returncode == 125
            assert b"Traceback" not in tls.stderr
    finally:
        listener.close()


async def test_events_since_until_in_rfc3339(served: Served, gw: GatewayClient) -> None:
    cid = unique_id("ev")
    with trio.fail_after(60):
        assert (
            await cli(served, "run", "--rm", "--name", cid, "busybox", "--", "true")
        ).returncode == 0
        done = await cli(served, "events", "--since", "5m", "--until", "0s",
                         "--filter", f"container={cid}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    actions = [line.split()[2] for line in lines]
    assert actions == ["create", "start", "die"], lines
    stamp = lines[0].split()[0]
    assert stamp[4] == "-" and stamp[10] == "T" and stamp.endswith("Z")


async def test_stats_no_stream_prints_one_table(served: Served, gw: GatewayClient) -> None:
    cid = unique_id("stats")
    try:
        with trio.fail_after(60):
            await cli(
                served, "run", "-d", "--name", cid, "-m", "32m", "busybox", "--", "sleep", "300"
            )
            done = await cli(served, "stats", "--no-stream", cid)
            assert done.returncode == 0, done.stderr
            header, row = done.stdout.decode().splitlines()
            assert header.split()[:2] == ["CONTAINER", "CPU"]
            assert row.startswith(cid) and "32MiB" in row
            as_json = await cli(served, "stats", "--no-stream", "--format", "json", cid)
            assert json.loads(as_json.stdout)["id"] == cid
    finally:
        await remove(gw, cid)


async def test_every_verb_has_help_with_an_example(served: Served) -> None:
    verbs = ["run", "create", "exec", "attach", "ps", "kill", "stop", "restart", "start",
             "pause", "unpause", "wait", "rm", "inspect", "top", "cp", "events", "stats",
             "version"]  # fmt: skip
    with trio.fail_after(120):
        for verb in verbs:
            done = await cli(served, verb, "--help")
            assert done.returncode == 0, verb
            assert b"example:" in done.stdout, verb


async def test_one_oom_event_per_task(served: Served, gw: GatewayClient) -> None:
    cid = unique_id("oom")
    # Several processes hit the limit, and the shim sees memory.events change many times.
    hog = "x=a; while :; do x=$x$x$x$x; done"
    script = f"sleep 1; for i in 1 2 3; do sh -c '{hog}' & done; {hog}"
    with trio.fail_after(120):
        done = await cli(served, "run", "--rm", "--name", cid, "-m", "16m", "busybox", "--",
                         "sh", "-c", script)  # fmt: skip
        assert done.returncode == 137, done.stderr
        async with gw.subscribe({"container": [cid]}, since=0) as events:
            kept = [await events.receive() for _ in range(gw.replayed)]
    actions = [e["Action"] for e in kept]
    assert actions.count("oom") == 1, actions
    assert actions[-1] == "die"


async def test_serve_default_capabilities_allow_chown_and_ping(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    from actors.control._cli import build_parser, serve_policy

    policy = serve_policy(build_parser().parse_args(["serve"]))
    assert "CAP_CHOWN" in policy.base_capabilities and "CAP_NET_RAW" in policy.base_capabilities
    narrow = serve_policy(build_parser().parse_args(["serve", "--default-capabilities", "minimal"]))
    assert "CAP_CHOWN" not in narrow.base_capabilities
    token = secrets.token_urlsafe(32)
    script = (
        "touch /tmp/f && chown 1000:1000 /tmp/f && ping -c 1 -W 5 127.0.0.1 >/dev/null && echo ok"
    )
    async with open_client(containerd.address, NAMESPACE, state_dir=str(io_dir)) as client:
        for chosen, expected in ((policy, 0), (narrow, 1)):
            # One gateway at a time: each removes --rm containers it sees exit.
            async with trio.open_nursery() as nursery:
                gateway = Gateway(client, GatewayConfig(token=token, policy=chosen, port=0))
                await nursery.start(gateway.serve)
                served = Served(client, gateway, f"ws://127.0.0.1:{gateway.port}", token)
                with trio.fail_after(60):
                    done = await cli(served, "run", "--rm", "busybox", "--", "sh", "-c", script)
                assert done.returncode == expected, done.stderr
                if expected == 0:
                    assert done.stdout == b"ok\n"
                nursery.cancel_scope.cancel()


async def test_serve_hint_names_the_state_dir_and_a_busy_port_is_one_line(
    containerd: PrivateContainerd, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    namespace = unique_id("serve")
    base = [sys.executable, "-m", "supervisor", "--state-dir", str(state), "serve",
            "--address", containerd.address, "--namespace", namespace]  # fmt: skip
    busy = trio.socket.socket()
    await busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with trio.fail_after(60):
            refused = await trio.run_process(
                [*base, "--listen", f"127.0.0.1:{busy.getsockname()[1]}"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=REPO,
            )
    finally:
        busy.close()
    assert refused.returncode == 125
    assert b"already in use" in refused.stderr
    assert b"Traceback" not in refused.stderr
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process(
            [*base, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, cwd=REPO
        )
        try:
            assert proc.stdout is not None
            seen = bytearray()
            await read_until(proc.stdout, b"stop with Ctrl-C", seen)
            [hint] = [line for line in seen.decode().splitlines() if line.startswith("try:")]
            assert f"--state-dir {state}" in hint
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()


# -- 7. restart policies ---------------------------------------------------------------------


async def test_run_restart_on_failure_restarts_exactly_twice_and_stop_is_final(
    served: Served, gw: GatewayClient
) -> None:
    failing, stopped = unique_id("rf"), unique_id("rs")
    try:
        with trio.fail_after(90):
            async with gw.subscribe({"container": [failing]}) as events:
                done = await cli(served, "run", "-d", "--restart", "on-failure:2", "--name",
                                 failing, "busybox", "--", "sh", "-c", "exit 1")  # fmt: skip
                assert done.returncode == 0, done.stderr
                actions: list[str] = []
                while actions.count("die") < 3:
                    actions.append((await events.receive())["Action"])
            assert actions.count("start") == 3
            code = await cli(served, "inspect", "-f",
                             "{{.RestartCount}} {{.State.Restarting}} {{.State.ExitCode}} "
                             "{{.HostConfig.RestartPolicy.Name}}", failing)  # fmt: skip
            assert code.stdout == b"2 false 1 on-failure\n", code.stderr
            assert (await cli(served, "run", "-d", "--restart", "always", "--name", stopped,
                              "busybox", "--", "sleep", "300")).returncode == 0  # fmt: skip
            assert (await cli(served, "stop", "-t", "0", stopped)).returncode == 0
            after = await cli(served, "inspect", "-f",
                              "{{.RestartCount}} {{.State.Restarting}} {{.State.Status}}",
                              stopped)  # fmt: skip
            assert after.stdout == b"0 false exited\n"
            conflict = await cli(served, "run", "--rm", "--restart", "always", "busybox")
            assert conflict.returncode == 125
            assert b"Conflicting options: --restart and --rm" in conflict.stderr
    finally:
        await remove(gw, failing)
        await remove(gw, stopped)


# -- 8. inside the container -----------------------------------------------------------------


async def test_hosts_and_resolv_conf_are_provided_read_only_and_removed_with_it(
    served: Served, gw: GatewayClient, tmp_path: Path
) -> None:
    from actors.control._etcfiles import resolv_conf

    cid = unique_id("etc")
    script = "cat /etc/hosts; echo ---; cat /etc/resolv.conf; echo x >> /etc/hosts || echo refused"
    with trio.fail_after(60):
        done = await cli(served, "run", "--name", cid, "busybox", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    hosts, resolv = done.stdout.decode().split("---\n")
    assert "127.0.0.1\tlocalhost" in hosts and f"127.0.1.1\t{cid}" in hosts
    assert "nameserver 127." not in resolv and "nameserver" in resolv
    assert resolv.endswith("refused\n")
    assert (tmp_path / "files" / cid / "hosts").exists()
    with trio.fail_after(30):
        assert (await cli(served, "rm", cid)).returncode == 0
    assert not (tmp_path / "files" / cid).exists()
    # docker's filter: loopback resolvers are unreachable from the container's network.
    assert resolv_conf("nameserver 127.0.0.53\nsearch lan\n") == (
        "search lan\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    )
    assert resolv_conf("nameserver ::1\nnameserver 10.0.0.1\n") == "nameserver 10.0.0.1\n"


# -- RPC budgets of the new gateway operations ------------------------------------------------


def _calls(client: Client) -> dict[str, int]:
    return dict(client.statistics().rpc.calls)


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


async def test_rpc_budgets_of_stop_top_and_auto_remove(served: Served, gw: GatewayClient) -> None:
    client = served.client
    polite, stubborn, auto = unique_id("bp"), unique_id("bs"), unique_id("ba")
    trap = "trap 'exit 0' TERM; while true; do sleep 0.1; done"
    with trio.fail_after(60):
        for cid, args in ((polite, ["sh", "-c", trap]), (stubborn, ["sleep", "300"])):
            before = _calls(client)
            await gw.call("container.create", {"id": cid, "args": args})
            await gw.call("task.start", {"id": cid})
            assert _delta(before, _calls(client)) == {
                "Containers.Create": 1, "Tasks.Create": 1, "Tasks.Start": 1
            }  # fmt: skip
        before = _calls(client)
        rows = await gw.call("task.top", {"id": polite})
        assert _delta(before, _calls(client)) == {"Tasks.ListPids": 1}
        assert any("sleep" in row["cmd"] or "sh" in row["cmd"] for row in rows)
        before = _calls(client)
        assert (await gw.call("container.stop", {"id": polite}))["code"] == 0
        assert _delta(before, _calls(client)) == {"Tasks.Kill": 1}
        before = _calls(client)
        await gw.call("container.stop", {"id": stubborn, "timeout": 0})
        assert _delta(before, _calls(client)) == {"Tasks.Kill": 2}  # TERM, then KILL
        for cid in (polite, stubborn):
            await remove(gw, cid)
        async with gw.subscribe({"container": [auto], "event": ["die"]}) as events:
            await gw.call(
                "container.create",
                {"id": auto, "args": ["sh", "-c", "read x"], "auto_remove": True},
            )
            await gw.call("task.start", {"id": auto, "stdin": True})
            before = _calls(client)
            await gw.call("task.kill", {"id": auto, "signal": "KILL"})
            await events.receive()
            while not await gone(gw, auto):
                await trio.sleep(0.05)
        made = _delta(before, _calls(client))
        # Our own polling: inspecting a deleted container asks containerd (NotFound).
        assert made.pop("Containers.Get", 0) >= 1
        assert made == {
            "Tasks.Kill": 1, "Tasks.Delete": 1, "Containers.Delete": 1
        }  # fmt: skip


async def test_a_new_gateway_removes_auto_remove_containers_that_exited_meanwhile(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    cid = unique_id("sweep")
    token = secrets.token_urlsafe(32)
    policy = SpecPolicy(default_rootfs=str(rootfs), allowed_rootfs_roots=(str(rootfs),))
    with trio.fail_after(60):
        async with open_client(containerd.address, NAMESPACE, state_dir=str(io_dir)) as client:
            async with trio.open_nursery() as nursery:
                gateway = Gateway(client, GatewayConfig(token=token, policy=policy, port=0))
                await nursery.start(gateway.serve)
                async with connect_gateway(f"ws://127.0.0.1:{gateway.port}", token) as gw:
                    await gw.call(
                        "container.create",
                        {"id": cid, "args": ["sh", "-c", "read x"], "auto_remove": True},
                    )
                    await gw.call("task.start", {"id": cid, "stdin": True})
                nursery.cancel_scope.cancel()
            # No gateway now: the task exits with nobody to remove it.
            task = await (await client.load_container(cid)).task()
            await task.kill(9)
            await task.wait()
            async with trio.open_nursery() as nursery:
                gateway = Gateway(client, GatewayConfig(token=token, policy=policy, port=0))
                await nursery.start(gateway.serve)
                async with connect_gateway(f"ws://127.0.0.1:{gateway.port}", token) as gw:
                    while not await gone(gw, cid):
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
