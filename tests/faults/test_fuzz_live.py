"""Fuzzing the live control plane: mutated JSON-RPC messages and random stdio frames.

The sans-IO decoder is fuzzed with hypothesis in tests/test_protocol.py; here a seeded
mutation corpus goes through a real server over loopback. Every message must be answered
(an error or a result; notifications get nothing), the server must keep serving, no handler
may fail internally, and containerd must end up unchanged.
"""

from __future__ import annotations

import json
import random
import secrets
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from actors import open_client
from actors.containerd._embedded import PrivateContainerd
from actors.control._policy import SpecPolicy
from actors.control.gateway import Gateway, GatewayConfig
from actors.control.gateway_client import connect_gateway

from ..helpers import raw_websocket
from .conftest import FaultReport, leftovers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = "ca-fuzz"
SEED = 20261129
TEMPLATES: list[dict[str, Any]] = [
    {"method": "version", "params": {}},
    {"method": "container.list", "params": {}},
    {"method": "container.inspect", "params": {"id": "fz"}},
    {"method": "container.create", "params": {"id": "fz1", "args": ["true"], "privileged": True}},
    {
        "method": "container.create",
        "params": {
            "id": "fz2",
            "args": ["true"],
            "mounts": [{"source": "/etc", "destination": "/x"}],
        },
    },
    {"method": "task.kill", "params": {"id": "fz", "signal": "SIGTERM", "all": False}},
    {"method": "task.resize", "params": {"id": "fz", "width": 80, "height": 24}},
    {"method": "task.update", "params": {"id": "fz", "memory_limit": 1048576}},
    {
        "method": "process.exec",
        "params": {"id": "fz", "exec_id": "e", "args": ["sh"], "terminal": True},
    },
    {"method": "events.subscribe", "params": {"filters": {"event": ["die"], "label": ["a=b"]}}},
    {"method": "events.unsubscribe", "params": {"subscription": "nope"}},
    {"method": "stdio.attach", "params": {"id": "fz", "exec_id": "e"}},
]
WEIRD_VALUES: list[Any] = [
    None,
    True,
    -1,
    2**64,
    1e308,
    "",
    "\u0000",
    "../../etc",
    "x" * 5000,
    [],
    {},
    [[[[[]]]]],
    {"$ref": "#"},
    "\ud7ff\ue000",
    -(2**53) - 1,
    "SIGKILL",
    0,
]


def mutate(rng: random.Random, template: dict[str, Any], serial: int) -> str | bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": serial, **json.loads(json.dumps(template))}
    choice = rng.randrange(9)
    if choice == 0:  # replace a param value with something of another type
        if message["params"]:
            key = rng.choice(list(message["params"]))
            message["params"][key] = rng.choice(WEIRD_VALUES)
    elif choice == 1:  # add an unknown field somewhere
        target = message if rng.random() < 0.5 else message["params"]
        target[f"extra{rng.randrange(100)}"] = rng.choice(WEIRD_VALUES)
    elif choice == 2:  # drop a required member
        del message[rng.choice(["jsonrpc", "method", "params"])]
    elif choice == 3:  # deep nesting
        value: Any = 1
        for _ in range(rng.choice([10, 70, 200])):
            value = [value]
        message["params"]["nest"] = value
    elif choice == 4:  # wrong id types
        message["id"] = rng.choice([1.5, [], {}, "x" * 300, 2**60])
    text = json.dumps(message)
    if choice == 5:  # truncate
        text = text[: rng.randrange(1, len(text))]
    elif choice == 6:  # flip bytes
        raw = bytearray(text.encode())
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw).decode("utf-8", errors="replace")
    elif choice == 7:  # a batch
        text = f"[{text}, {text}]"
    elif choice == 8:  # a notification (no id: no reply expected)
        message.pop("id", None)
        text = json.dumps(message)
    return text


def raw_socket(port: int, resource: str, token: str, protocols: list[str]) -> Any:
    return raw_websocket(port, resource, token=token, subprotocols=protocols)


async def test_mutated_messages_and_random_frames(
    daemon: PrivateContainerd, rootfs: Path, state: str, fault_report: FaultReport
) -> None:
    rng = random.Random(SEED)
    token = secrets.token_urlsafe(32)
    policy = SpecPolicy(default_rootfs=str(rootfs), allowed_rootfs_roots=(str(rootfs),))
    async with (
        open_client(daemon.address, NS, state_dir=state) as client,
        trio.open_nursery() as nursery,
    ):
        gateway = Gateway(
            client, GatewayConfig(token=token, policy=policy, port=0, rate=10_000, burst=10_000)
        )
        await nursery.start(gateway.serve)
        port = gateway.port or 0
        before = {c.id for c in await client._remote.containers_list()}
        answered = errors = sent = reconnects = 0
        total = 1500
        while sent < total:
            async with raw_socket(port, "/", token, ["containerd-actors.v1"]) as ws:
                try:
                    while sent < total:
                        sent += 1
                        await ws.send_message(mutate(rng, rng.choice(TEMPLATES), sent))
                        sentinel = f"sentinel-{sent}"
                        await ws.send_message(
                            json.dumps(
                                {
                                    "jsonrpc": "2.0",
                                    "id": sentinel,
                                    "method": "container.list",
                                    "params": {},
                                }
                            )
                        )
                        with trio.fail_after(10):
                            while True:
                                reply = json.loads(await ws.get_message())
                                assert reply["jsonrpc"] == "2.0"
                                assert ("error" in reply) != ("result" in reply), reply
                                if reply.get("id") == sentinel:
                                    break
                                answered += 1
                                errors += "error" in reply
                except ConnectionClosed as exc:
                    # Only a frame over the size limit may end the connection (1009).
                    assert exc.reason is not None
                    assert exc.reason.code == 1009, exc.reason
                    reconnects += 1
        # Random binary frames on a live stdio stream: ignored or applied, never a crash.
        cid = "fz-stdio"
        async with connect_gateway(f"ws://127.0.0.1:{port}", token) as gw:
            await gw.call("container.create", {"id": cid, "args": ["sh", "-c", "cat > /dev/null"]})
            await gw.call("task.start", {"id": cid, "stdin": True})
            ticket = await gw.call("stdio.attach", {"id": cid})
            async with raw_socket(port, ticket["path"], token, ["v5.channel.k8s.io"]) as stdio:
                for _ in range(300):
                    frame = bytes([rng.choice([0, 1, 2, 3, 4, 5, 200, 255])]) + rng.randbytes(
                        rng.randrange(0, 64)
                    )
                    if frame[0] == 255:
                        continue  # CLOSE of stdin would end the process: covered by the CLI tests
                    await stdio.send_message(frame)
                await stdio.send_message(bytes([4]) + b'{"Width": 0}')
            status = await gw.call("task.status", {"id": cid, "refresh": True})
            assert status["status"] == "running"  # the process only ever saw stdin bytes
            await gw.call("task.kill", {"id": cid, "signal": "KILL"})
            await gw.call("task.wait", {"id": cid})
            await gw.call("task.delete", {"id": cid})
            await gw.call("container.delete", {"id": cid})
            assert (await gw.call("version"))["protocol"] == "containerd-actors.v1"
        assert gateway.statistics().internal_errors == 0
        after = {c.id for c in await client._remote.containers_list()}
        assert after == before, after - before
        fault_report.injection("mutated JSON-RPC messages")
        fault_report.count("fuzz messages sent", sent)
        fault_report.count("fuzz replies (errors)", errors)
        fault_report.count("fuzz replies (results)", answered - errors)
        fault_report.count("fuzz oversize disconnects", reconnects)
        nursery.cancel_scope.cancel()
    assert leftovers(daemon, NS, Path(state)) == []
