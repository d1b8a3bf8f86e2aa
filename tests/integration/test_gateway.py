"""The websocket control plane against the real containerd, over real loopback websockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
)

from actors import AlreadyExists, FailedPrecondition, NotFound
from actors.containerd._embedded import PrivateContainerd
from actors.control._policy import SpecPolicy
from actors.control.gateway import GatewayConfig
from actors.control.gateway_client import GatewayClient, connect_gateway
from actors.errors import Unauthenticated

from ..conftest import NAMESPACE, unique_id
from ..helpers import raw_websocket
from .gateway_support import Served, serve

pytestmark = pytest.mark.integration


def open_websocket(
    host: str,
    port: int,
    resource: str,
    *,
    use_ssl: bool,
    subprotocols: list[str],
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = 1,
) -> Any:
    assert host == "127.0.0.1"
    assert not use_ssl
    return raw_websocket(
        port,
        resource,
        token=None,
        subprotocols=subprotocols,
        extra_headers=extra_headers,
        message_queue_size=message_queue_size,
    )


async def test_round_trip_of_every_method(gw: GatewayClient, served: Served) -> None:
    version = await gw.call("version")
    assert version["protocol"] == "containerd-actors.v1"
    cid = unique_id("gw")
    created = await gw.call(
        "container.create",
        {"id": cid, "args": ["sleep", "300"], "labels": {"team": "a"}, "memory_limit": 1 << 26},
    )
    assert created["id"] == cid
    assert created["labels"] == {"team": "a"}
    assert created["task"] is None
    with pytest.raises(AlreadyExists):
        await gw.call("container.create", {"id": cid, "args": ["true"]})
    assert cid in [c["id"] for c in await gw.call("container.list")]
    started = await gw.call("task.start", {"id": cid})
    assert started["pid"] > 0
    inspected = await gw.call("container.inspect", {"id": cid})
    assert inspected["task"]["status"] == "running"
    assert (await gw.call("task.status", {"id": cid, "refresh": True}))["status"] == "running"
    pids = await gw.call("task.pids", {"id": cid})
    assert started["pid"] in [p["pid"] for p in pids]
    stats = await gw.call("task.stats", {"id": cid})
    assert stats["memory"]["usage_bytes"] > 0
    await gw.call("task.pause", {"id": cid})
    assert (await gw.call("task.status", {"id": cid, "refresh": True}))["status"] == "paused"
    await gw.call("task.resume", {"id": cid})
    await gw.call("task.update", {"id": cid, "pids_limit": 50})
    with pytest.raises(FailedPrecondition, match="no terminal"):
        await gw.call("task.resize", {"id": cid, "width": 80, "height": 24})
    exec_pid = (
        await gw.call("process.exec", {"id": cid, "exec_id": "e1", "args": ["sleep", "60"]})
    )["pid"]
    assert exec_pid > 0
    await gw.call("process.kill", {"id": cid, "exec_id": "e1", "signal": "SIGKILL"})
    assert (await gw.call("process.wait", {"id": cid, "exec_id": "e1"}))["code"] == 137
    assert (await gw.call("process.delete", {"id": cid, "exec_id": "e1"}))["code"] == 137
    with pytest.raises(FailedPrecondition):
        await gw.call("container.delete", {"id": cid})
    await gw.call("task.kill", {"id": cid, "signal": 9})
    assert (await gw.call("task.wait", {"id": cid}))["code"] == 137
    assert (await gw.call("task.delete", {"id": cid}))["code"] == 137
    await gw.call("container.delete", {"id": cid})
    with pytest.raises(NotFound):
        await gw.call("container.inspect", {"id": cid})
    assert cid not in await served.ids()


async def test_run_interactive_through_cat(gw: GatewayClient) -> None:
    cid = unique_id("gwcat")
    await gw.call("container.create", {"id": cid, "args": ["cat"]})
    await gw.call("task.start", {"id": cid, "stdin": True})
    output = b""
    with trio.fail_after(20):
        async with gw.attach(cid) as session:
            await session.send_stdin(b"hello\nworld\n")
            await session.close_stdin()
            async for channel, data in session.output():
                assert channel == 1
                output += data
    assert output == b"hello\nworld\n"
    assert session.exit_code == 0
    await gw.call("task.delete", {"id": cid})
    await gw.call("container.delete", {"id": cid})


async def test_terminal_exec_with_resize(gw: GatewayClient) -> None:
    cid = unique_id("gwtty")
    await gw.call("container.create", {"id": cid, "args": ["sleep", "300"]})
    await gw.call("task.start", {"id": cid})
    await gw.call(
        "process.exec",
        {"id": cid, "exec_id": "tty", "args": ["sh"], "terminal": True, "stdin": True},
    )
    output = b""
    with trio.fail_after(20):
        async with gw.attach(cid, "tty") as session:
            await session.resize(120, 40)
            await session.send_stdin(b"stty size; exit 5\n")
            async for _, data in session.output():
                output += data
    assert b"40 120" in output
    assert session.exit_code == 5
    await gw.call("process.delete", {"id": cid, "exec_id": "tty"})
    await gw.call("task.kill", {"id": cid, "signal": "KILL"})
    await gw.call("task.wait", {"id": cid})
    await gw.call("task.delete", {"id": cid})
    await gw.call("container.delete", {"id": cid})


async def test_events_subscriber_sees_create_start_die(gw: GatewayClient) -> None:
    cid = unique_id("gwev")
    async with gw.subscribe({"container": [cid]}) as events:
        await gw.call(
            "container.create", {"id": cid, "args": ["sh", "-c", "exit 6"], "labels": {"k": "v"}}
        )
        await gw.call("task.start", {"id": cid})
        seen = []
        with trio.fail_after(20):
            async for event in events:
                seen.append(event)
                if event["Action"] == "die":
                    break
    assert [e["Action"] for e in seen] == ["create", "start", "die"]
    die = seen[-1]
    assert die["Type"] == "container"
    assert die["Actor"]["ID"] == cid
    assert die["Actor"]["Attributes"]["exitCode"] == "6"
    assert die["Actor"]["Attributes"]["k"] == "v"
    assert die["topic"] == "/tasks/exit"
    assert die["namespace"] == NAMESPACE
    assert die["timeNano"] // 10**9 == die["time"]
    await gw.call("task.delete", {"id": cid})
    await gw.call("container.delete", {"id": cid})


async def _raw(served: Served, text: str | bytes) -> dict[str, Any]:
    async with open_websocket(
        "127.0.0.1",
        int(served.url.rsplit(":", 1)[1]),
        "/",
        use_ssl=False,
        subprotocols=["containerd-actors.v1"],
        extra_headers=[(b"authorization", f"Bearer {served.token}".encode())],
    ) as ws:
        await ws.send_message(text)
        with trio.fail_after(10):
            reply: dict[str, Any] = json.loads(await ws.get_message())
        return reply


BAD_MESSAGES = [
    ("malformed json", '{"jsonrpc": "2.0", "id": 1, "method": ', -32700),
    ("not an object", "[1, 2, 3]", -32600),
    ("unknown method", '{"jsonrpc":"2.0","id":1,"method":"container.explode","params":{}}', -32601),
    (
        "wrong param type",
        '{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"id":5,"args":["true"]}}',
        -32602,
    ),
    (
        "unknown field",
        '{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"id":"x1","args":["true"],"evil":1}}',
        -32602,
    ),
    (
        "traversal id",
        '{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"id":"../etc","args":["true"]}}',
        -32602,
    ),
    (
        "100-char id",
        '{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"id":"'
        + "a" * 100
        + '","args":["true"]}}',
        -32602,
    ),
    (
        "host pid namespace",
        '{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"id":"hostpid","args":["true"],"namespaces":["ipc","uts","mount","network"]}}',
        None,
    ),
    (
        "bind of /",
        '{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"id":"bindroot","args":["true"],"mounts":[{"source":"/","destination":"/host"}]}}',
        None,
    ),
    (
        "privileged",
        '{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"id":"priv","args":["true"],"privileged":true}}',
        None,
    ),
    (
        "hooks",
        '{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"id":"hooky","args":["true"],"hooks":{"prestart":[{"path":"/bin/sh"}]}}}',
        None,
    ),
]


@pytest.mark.parametrize(
    ("what", "message", "code"), BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES]
)
async def test_bad_input_gets_an_error_and_changes_nothing(
    served: Served, what: str, message: str, code: int | None
) -> None:
    before = await served.ids()
    reply = await _raw(served, message)
    assert "error" in reply, what
    if code is not None:
        assert reply["error"]["code"] == code
    else:
        assert reply["error"]["code"] in (-32003, -32007), (
            reply
        )  # INVALID_ARGUMENT / PERMISSION_DENIED
        assert reply["error"]["data"]["local"] is True
    assert await served.ids() == before


async def test_binary_frame_on_rpc_socket_is_refused(served: Served) -> None:
    reply = await _raw(served, b"\x00\x01")
    assert reply["error"]["code"] == -32600


async def test_oversized_frame_closes_the_connection(served: Served) -> None:
    async with open_websocket(
        "127.0.0.1",
        served.gateway.port or 0,
        "/",
        use_ssl=False,
        subprotocols=["containerd-actors.v1"],
        extra_headers=[(b"authorization", f"Bearer {served.token}".encode())],
    ) as ws:
        with pytest.raises(ConnectionClosed) as info, trio.fail_after(10):
            await ws.send_message("x" * (2 << 20))
            await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1009


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], 401),
        ([(b"authorization", b"Bearer wrong-token-wrong-token")], 401),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], 401),
        ("origin", 403),
    ],
    ids=["no token", "wrong token", "basic auth", "foreign origin"],
)
async def test_handshake_refusals(served: Served, headers: Any, status: int) -> None:
    if headers == "origin":
        headers = [
            (b"authorization", f"Bearer {served.token}".encode()),
            (b"origin", b"https://evil.example"),
        ]
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket(
            "127.0.0.1",
            served.gateway.port or 0,
            "/",
            use_ssl=False,
            subprotocols=["containerd-actors.v1"],
            extra_headers=headers,
        ):
            pass
    assert info.value.status_code == status
    assert served.token.encode() not in (info.value.body or b"")


async def test_browser_bearer_subprotocol_is_accepted(served: Served) -> None:
    import base64

    encoded = base64.urlsafe_b64encode(served.token.encode()).decode().rstrip("=")
    async with open_websocket(
        "127.0.0.1",
        served.gateway.port or 0,
        "/",
        use_ssl=False,
        subprotocols=["containerd-actors.v1", f"base64url.bearer.authorization.k8s.io.{encoded}"],
    ) as ws:
        assert ws.subprotocol == "containerd-actors.v1"


def test_non_loopback_without_tls_refuses_to_start(rootfs: Path) -> None:
    policy = SpecPolicy(default_rootfs=str(rootfs), allowed_rootfs_roots=(str(rootfs),))
    with pytest.raises(ValueError, match="non-loopback"):
        GatewayConfig(token="t" * 32, policy=policy, host="0.0.0.0")


async def test_slow_subscriber_is_dropped_while_another_keeps_receiving(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path, tmp_path: Path
) -> None:
    async with serve(containerd, io_dir, rootfs, tmp_path, outbound_buffer=4) as s:
        labels = {f"pad{i}": "x" * 3900 for i in range(8)}  # ~32 KiB per event message
        async with (
            connect_gateway(s.url, s.token) as fast,
            connect_gateway(s.url, s.token) as admin,
        ):
            cid = unique_id("slow")
            await admin.call(
                "container.create", {"id": cid, "args": ["sleep", "300"], "labels": labels}
            )
            await admin.call("task.start", {"id": cid})
            async with open_websocket(
                "127.0.0.1",
                s.gateway.port or 0,
                "/",
                use_ssl=False,
                subprotocols=["containerd-actors.v1"],
                extra_headers=[(b"authorization", f"Bearer {s.token}".encode())],
                message_queue_size=1,
            ) as slow:
                await slow.send_message(
                    '{"jsonrpc":"2.0","id":1,"method":"events.subscribe","params":{}}'
                )
                received = 0
                async with fast.subscribe() as events:
                    with trio.fail_after(120):
                        while s.gateway.statistics().slow_disconnects == 0:
                            await admin.call("task.pause", {"id": cid})
                            await admin.call("task.resume", {"id": cid})
                            while True:
                                with trio.move_on_after(0.2):
                                    await events.receive()
                                    received += 1
                                    continue
                                break
                        dropped_at = received
                        await admin.call("task.pause", {"id": cid})
                        await admin.call("task.resume", {"id": cid})
                        for _ in range(2):
                            await events.receive()
                            received += 1
                assert received >= dropped_at + 2
                with pytest.raises(ConnectionClosed) as info, trio.fail_after(30):
                    while True:
                        await slow.get_message()
                assert info.value.reason is not None
                assert info.value.reason.code == 1013
            await admin.call("task.kill", {"id": cid, "signal": "KILL"})
            await admin.call("task.wait", {"id": cid})
            await admin.call("task.delete", {"id": cid})
            await admin.call("container.delete", {"id": cid})


async def _cli(
    served: Served, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "CONTAINERD_ACTORS_TOKEN": served.token,
        "CONTAINERD_ACTORS_URL": served.url,
    }
    return await trio.run_process(
        [sys.executable, "-m", "supervisor", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


async def test_cli_run_exit_codes_and_stdin(served: Served) -> None:
    with trio.fail_after(60):
        done = await _cli(
            served, "run", "--rm", "busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 3"
        )
        assert done.returncode == 3
        assert done.stdout == b"out\n"
        assert done.stderr == b"err\n"
        piped = await _cli(
            served, "run", "-i", "--rm", "busybox", "--", "cat", stdin=b"through cat\n"
        )
        assert piped.returncode == 0
        assert piped.stdout == b"through cat\n"
        missing = await _cli(served, "run", "--rm", "busybox", "--", "/no/such/binary")
        assert missing.returncode == 127
        assert b"no such file" in missing.stderr
        listed = await _cli(served, "ps", "--format", "json")
        assert listed.returncode == 0
        bad = await _cli(served, "run", "--rm", "--name", "../x", "busybox", "--", "true")
        assert bad.returncode == 125
        # Names what is wrong (the identifier), not merely any text containing "id".
        assert b"Expected an identifier" in bad.stderr, bad.stderr
        assert b"$.params.id" in bad.stderr, bad.stderr  # which field


async def test_cli_without_server_says_how_to_start_it(served: Served) -> None:
    env = {**os.environ, "CONTAINERD_ACTORS_TOKEN": "x" * 32}
    done = await trio.run_process(
        [sys.executable, "-m", "supervisor", "--url", "ws://127.0.0.1:1", "ps"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    assert done.returncode == 125
    assert b"containerd-actors serve" in done.stderr


def test_token_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    from actors.control._cli import load_or_create_token

    path = tmp_path / "state" / "token"
    token = load_or_create_token(path)
    assert len(token) >= 43  # 256 bits, url-safe base64
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_or_create_token(path) == token


async def test_unix_socket_listener_is_private_and_serves(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path, tmp_path: Path
) -> None:
    sock = str(tmp_path / "ca.sock")
    async with serve(containerd, io_dir, rootfs, tmp_path, unix_socket=sock) as s:
        assert (os.stat(sock).st_mode & 0o777) == 0o600
        async with connect_gateway(f"unix://{sock}", s.token) as gw:
            assert (await gw.call("version"))["protocol"] == "containerd-actors.v1"
        with pytest.raises(Unauthenticated, match="401"):
            async with connect_gateway(f"unix://{sock}", "wrong-token-wrong-token"):
                pass
