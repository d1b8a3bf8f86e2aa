"""Attacks on the control plane by a token holder (or by anyone), against the real containerd.

The token holder is not root: nothing a request carries may reach a label, annotation or
runtime option that containerd, a shim or runc acts on.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import InvalidArgument, NotFound
from actors._embedded import PrivateContainerd
from actors._labels import USER_LABEL_PREFIX
from actors.gateway_client import GatewayClient, connect_gateway

from .conftest import unique_id
from .test_gateway import Served, _cli, _raw, serve

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path, tmp_path: Path
) -> AsyncIterator[Served]:
    async with serve(containerd, io_dir, rootfs, tmp_path) as s:
        yield s


@pytest.fixture
async def gw(served: Served) -> AsyncIterator[GatewayClient]:
    async with connect_gateway(served.url, served.token) as client:
        yield client


def _calls(served: Served) -> dict[str, int]:
    return dict(served.client.statistics().rpc.calls)


async def _remove(gw: GatewayClient, cid: str) -> None:
    await gw.call("task.kill", {"id": cid, "signal": "KILL"})
    await gw.call("task.wait", {"id": cid})
    await gw.call("task.delete", {"id": cid})
    await gw.call("container.delete", {"id": cid})


# --- labels that containerd acts on ------------------------------------------------------


@pytest.mark.slow
async def test_restart_monitor_labels_cannot_run_a_host_command(
    gw: GatewayClient, served: Served, tmp_path: Path
) -> None:
    """The issue's attack: containerd's restart monitor (on by default, every 10 s) would
    recreate the task with the label's log URI, and the shim would run it as root on the host."""
    ran = tmp_path / "binary-log-ran"
    appended = tmp_path / "logpath-appended"
    attack = {
        "containerd.io/restart.status": "running",
        "containerd.io/restart.loguri": f"binary:///bin/sh?-c=touch+{ran}",
    }
    file_attack = {
        "containerd.io/restart.status": "running",
        "containerd.io/restart.logpath": str(appended),
    }
    before_ids = await served.ids()
    accepted: list[str] = []
    refusals: list[str] = []
    for labels in (attack, file_attack):
        cid = unique_id("restart")
        calls = _calls(served)
        try:
            await gw.call(
                "container.create",
                {"id": cid, "args": ["sh", "-c", "echo pwned; sleep 1"], "labels": labels},
            )
        except InvalidArgument as exc:
            refusals.append(str(exc))
            assert _calls(served) == calls  # refused before any RPC
            with pytest.raises(NotFound):
                await gw.call("task.start", {"id": cid})
        else:
            accepted.append(cid)
            await gw.call("task.start", {"id": cid})
    # The same through the command line, as the issue ran it.
    cli = await _cli(
        served,
        "run", "-d", "--name", unique_id("restartcli"),
        "-l", "containerd.io/restart.status=running",
        "-l", f"containerd.io/restart.loguri=binary:///bin/sh?-c=touch+{ran}",
        "busybox", "--", "sleep", "1",
    )  # fmt: skip
    try:
        # One full monitor interval (10 s) after the tasks would have exited.
        with trio.move_on_after(13):
            while not (ran.exists() or appended.exists()):
                await trio.sleep(0.2)
    finally:
        for cid in accepted:
            # Best effort (only reached if the attack got through): the monitor may be
            # recreating the task under us.
            with trio.move_on_after(10), contextlib.suppress(Exception):
                await _remove(gw, cid)
    assert not ran.exists(), "the restart monitor ran the label's binary on the host"
    assert not appended.exists(), "the shim appended container output to a host file"
    assert not accepted, "a container with restart-monitor labels was created"
    assert all("containerd.io/" in message for message in refusals), refusals
    assert cli.returncode == 125, cli.stderr
    assert b"containerd.io/restart." in cli.stderr
    assert await served.ids() == before_ids


RESERVED_KEYS = [
    "containerd.io/restart.status",
    "containerd.io/restart.loguri",
    "containerd.io/restart.logpath",
    "containerd.io/gc.ref.content",
    "Containerd.IO/restart.status",
    "io.containerd.image.config.stop-signal",
    "io.containerd.runc.v2.group",
    "io.cri-containerd.kind",
    "io.kubernetes.cri.sandbox-id",
    "nerdctl/state-dir",
    "com.docker/engine.bundle.path",
    "org.systemd.property.DeviceAllow",
    "org.criu.config",
    "org.opencontainers.image.ref.name",
    "io.containerd-actors.user/team",
    "io.containerd-actors.internal",
]


async def test_reserved_label_namespaces_are_refused(gw: GatewayClient, served: Served) -> None:
    before_ids = await served.ids()
    calls = _calls(served)
    for key in RESERVED_KEYS:
        cid = unique_id("reserved")
        with pytest.raises(InvalidArgument) as info:
            await gw.call(
                "container.create",
                {"id": cid, "args": ["true"], "labels": {"team": "a", key: "x"}},
            )
        assert repr(key) in str(info.value), key
        assert info.value.local
    assert _calls(served) == calls
    assert await served.ids() == before_ids


@pytest.mark.parametrize(
    "field",
    [
        ("annotations", {"io.containerd.runc.v2.group": "victim"}),
        ("annotations", {"org.systemd.property.DeviceAllow": "char-* rwm"}),
        ("runtime", "/tmp/evil-shim"),
        ("runtime", {"name": "io.containerd.runc.v2", "options": {"binary_name": "/bin/sh"}}),
        ("runtime_options", {"BinaryName": "/bin/sh", "Root": "/tmp", "SystemdCgroup": True}),
        ("shim", "io.containerd.evil.v1"),
        ("binary_name", "/bin/sh"),
        ("criu_path", "/bin/sh"),
        ("spec", {"annotations": {"org.criu.config": "/tmp/x"}}),
        ("extensions", {"x": {"type_url": "t", "value": "AA=="}}),
        ("snapshotter", "native"),
        ("image", "docker.io/library/busybox:latest"),
    ],
    ids=lambda f: f[0] if isinstance(f, tuple) else str(f),
)
async def test_requests_cannot_carry_annotations_or_runtime_settings(
    served: Served, field: tuple[str, Any]
) -> None:
    name, value = field
    params = {"id": unique_id("rt"), "args": ["true"], name: value}
    before_ids = await served.ids()
    calls = _calls(served)
    reply = await _raw(
        served,
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "container.create", "params": params}),
    )
    assert reply["error"]["code"] == -32602, reply
    assert reply["error"]["data"]["path"] == "$.params", reply
    assert name in reply["error"]["data"]["reason"], reply
    assert _calls(served) == calls
    assert await served.ids() == before_ids


async def test_user_labels_round_trip_and_are_stored_prefixed(
    gw: GatewayClient, served: Served
) -> None:
    cid = unique_id("labels")
    labels = {"team": "a", "app.example/tier": "web", "name": "other"}
    async with gw.subscribe({"label": ["team=a"], "container": [cid]}) as events:
        created = await gw.call("container.create", {"id": cid, "args": ["true"], "labels": labels})
        await gw.call("task.start", {"id": cid})
        with trio.fail_after(20):
            event = await events.receive()
    assert created["labels"] == labels
    assert (await gw.call("container.inspect", {"id": cid}))["labels"] == labels
    listed = {c["id"]: c for c in await gw.call("container.list")}
    assert listed[cid]["labels"] == labels
    assert event["Action"] == "create"
    attributes = event["Actor"]["Attributes"]
    assert attributes["team"] == "a"
    assert attributes["app.example/tier"] == "web"
    assert attributes["name"] == cid  # the real name wins over the label
    assert not any(k.startswith("io.containerd-actors") for k in attributes)

    # containerd's own record: only our prefix, the default runtime, no options, no
    # annotations.
    record = await served.client._remote.containers_get(cid)
    assert dict(record.labels) == {USER_LABEL_PREFIX + k: v for k, v in labels.items()}
    assert record.runtime.name == "io.containerd.runc.v2"
    assert not record.runtime.HasField("options")
    assert not json.loads(record.spec.value).get("annotations")
    assert not dict(record.extensions)

    await gw.call("task.wait", {"id": cid})
    await gw.call("task.delete", {"id": cid})
    await gw.call("container.delete", {"id": cid})


async def test_label_name_cannot_claim_another_containers_events(gw: GatewayClient) -> None:
    victim = unique_id("victim")
    spoofer = unique_id("spoofer")
    async with gw.subscribe({"container": [victim]}) as events:
        await gw.call(
            "container.create",
            {"id": spoofer, "args": ["sh", "-c", "exit 3"], "labels": {"name": victim}},
        )
        await gw.call("task.start", {"id": spoofer})
        assert (await gw.call("task.wait", {"id": spoofer}))["code"] == 3
        await gw.call("container.create", {"id": victim, "args": ["true"]})
        await gw.call("task.start", {"id": victim})
        with trio.fail_after(20):
            first = await events.receive()
    # Events are delivered in order: the spoofer's create/start/die came first and were
    # not matched.
    assert first["Actor"]["ID"] == victim
    assert first["Action"] == "create"
    assert first["Actor"]["Attributes"]["name"] == victim
    await gw.call("task.wait", {"id": victim})
    for container_id in (spoofer, victim):
        await gw.call("task.delete", {"id": container_id})
        await gw.call("container.delete", {"id": container_id})
