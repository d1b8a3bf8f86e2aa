"""Shim groups against the real containerd: shared shims, a shim's death, a fresh shim after.

containerd's runc shim serves every container of a namespace that carries the same
``io.containerd.runc.v2.group`` annotation; the client's pool sets it. The shim is the parent
of each member's init process (it is their subreaper), which is how these tests see it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING

import pytest
import trio

from actors import EventType, NotFound, ShimGroups, Task, build_spec, open_client

from ..conftest import NAMESPACE, unique_id
from ..helpers import Recorder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from actors import Client, Container
    from actors.containerd._embedded import PrivateContainerd

pytestmark = pytest.mark.integration

LIFECYCLE_RPCS = {
    "Containers.Create": 1,
    "Tasks.Create": 1,
    "Tasks.Start": 1,
    "Tasks.Delete": 1,
    "Containers.Delete": 1,
}


def shim_of(pid: int) -> int:
    """The pid of the containerd-shim-runc-v2 whose child ``pid`` is."""
    with open(f"/proc/{pid}/status") as status:
        parent = next(int(line.split()[1]) for line in status if line.startswith("PPid:"))
    with open(f"/proc/{parent}/comm") as comm:
        assert comm.read().strip().startswith("containerd-shim"), "init's parent is not a shim"
    return parent


def rpc_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }


async def remove(container: Container) -> None:
    try:
        task = await container.task()
    except Exception:
        task = None
    if task is not None:
        try:
            await task.kill(signal.SIGKILL)
        except Exception:
            pass
        with trio.fail_after(20):
            await task.wait()
        await task.delete()
    await container.delete()


async def test_members_share_shims_in_rotation_and_lifecycles_cost_the_same(
    containerd: PrivateContainerd, rootfs: Path, io_dir: Path
) -> None:
    policy = ShimGroups(shims=2, max_per_shim=2)
    async with open_client(
        containerd.address, NAMESPACE, state_dir=str(io_dir), shim_groups=policy
    ) as client:
        containers: list[Container] = []
        tasks: list[Task] = []
        try:
            with trio.fail_after(60):
                for _ in range(4):
                    container = await client.new_container(
                        unique_id("grp"), build_spec(rootfs, ["sleep", "60"])
                    )
                    containers.append(container)
                    tasks.append(await container.start())
                shims = [shim_of(task.pid) for task in tasks]
                # Members 0 and 2 share slot 0's shim, 1 and 3 slot 1's; two shims in all.
                assert shims[0] == shims[2]
                assert shims[1] == shims[3]
                assert shims[0] != shims[1]
                # A fifth container: both groups are full, so slot 0 opens a fresh shim.
                fifth = await client.new_container(
                    unique_id("grp"), build_spec(rootfs, ["sleep", "60"])
                )
                containers.append(fifth)
                tasks.append(await fifth.start())
                assert shim_of(tasks[4].pid) not in shims
        finally:
            with trio.fail_after(60):
                for container in containers:
                    await remove(container)

        # A short lifecycle in a group costs the same 5 RPCs as with a shim of its own.
        with trio.fail_after(30):
            before = dict(client.statistics().rpc.calls)
            container = await client.new_container(unique_id("grp"), build_spec(rootfs, ["true"]))
            task = await container.start()
            assert (await task.wait()).code == 0
            await task.delete()
            await container.delete()
            assert rpc_delta(before, client.statistics().rpc.calls) == LIFECYCLE_RPCS


@contextlib.asynccontextmanager
async def _removing(client: Client, ids: list[str]) -> AsyncIterator[None]:
    """Remove what a failed test left (a passing one removed everything itself)."""
    try:
        yield
    finally:
        with trio.fail_after(60):
            for cid in ids:
                try:
                    container = await client.load_container(cid)
                except NotFound:
                    continue
                await remove(container)


async def wait_actors_gone(client: Client) -> None:
    with trio.fail_after(10):
        while client.statistics().actors:
            await trio.sleep(0.02)


async def test_killing_a_groups_shim_reports_each_exit_once_and_the_next_gets_a_fresh_shim(
    containerd: PrivateContainerd, rootfs: Path, io_dir: Path
) -> None:
    recorder = Recorder()
    policy = ShimGroups(shims=1, max_per_shim=8)
    async with open_client(
        containerd.address, NAMESPACE, recorder, state_dir=str(io_dir), shim_groups=policy
    ) as client:
        containers: list[Container] = []
        try:
            with trio.fail_after(60):
                tasks: list[Task] = []
                for _ in range(3):
                    container = await client.new_container(
                        unique_id("dead"), build_spec(rootfs, ["sleep", "60"])
                    )
                    containers.append(container)
                    tasks.append(await container.start())
                shim = shim_of(tasks[0].pid)
                assert {shim_of(t.pid) for t in tasks} == {shim}

                os.kill(shim, signal.SIGKILL)
                statuses = []
                for task in tasks:
                    statuses.append(await task.wait())
                # containerd reports a dead shim's tasks as SIGKILLed (or unknown).
                assert all(s.code != 0 for s in statuses)
                # A resync after the fact changes nothing: each exit was reported once.
                await client.resync()
                await trio.sleep(0.5)
                for container in containers:
                    exits = [
                        t
                        for t, i in recorder.of(container.id)
                        if t is EventType.EXIT and i.process_id == container.id
                    ]
                    assert len(exits) == 1, recorder.of(container.id)
                stats = client.statistics().shim_groups
                assert stats is not None
                assert stats.retired_dead == 1

                # The group's next container runs in a fresh shim.
                fresh = await client.new_container(
                    unique_id("dead"), build_spec(rootfs, ["sleep", "60"])
                )
                containers.append(fresh)
                fresh_task = await fresh.start()
                fresh_shim = shim_of(fresh_task.pid)
                assert fresh_shim != shim
                os.kill(fresh_shim, 0)  # alive
        finally:
            with trio.fail_after(60):
                for container in containers:
                    await remove(container)
        await wait_actors_gone(client)
        stats = client.statistics().shim_groups
        assert stats is not None
        assert (stats.groups, stats.members) == (0, 0)


async def test_concurrent_short_lifecycles_in_few_shims_all_succeed(
    containerd: PrivateContainerd, rootfs: Path, io_dir: Path
) -> None:
    # Groups empty and refill constantly: a create may meet its group's shim exiting,
    # which the client absorbs by repeating Tasks.Create (counted, never hidden).
    policy = ShimGroups(shims=2, max_per_shim=4)
    count = 48
    async with open_client(
        containerd.address, NAMESPACE, state_dir=str(io_dir), shim_groups=policy
    ) as client:
        spec = build_spec(rootfs, ["true"])
        limiter = trio.CapacityLimiter(16)
        codes: list[int] = []

        async def lifecycle() -> None:
            async with limiter:
                container = await client.new_container(unique_id("burst"), spec)
                task = await container.start()
                codes.append((await task.wait()).code)
                await task.delete()
                await container.delete()

        before = dict(client.statistics().rpc.calls)
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(lifecycle)
        assert codes == [0] * count
        stats = client.statistics().shim_groups
        assert stats is not None
        expected = {k: v * count for k, v in LIFECYCLE_RPCS.items()}
        expected["Tasks.Create"] += stats.create_retries
        assert rpc_delta(before, client.statistics().rpc.calls) == expected
        await wait_actors_gone(client)
        stats = client.statistics().shim_groups
        assert stats is not None
        assert (stats.groups, stats.members) == (0, 0)
        print("create retries:", stats.create_retries, "generations:", stats.generations)


async def test_the_control_plane_groups_its_containers_and_requests_cannot_choose_a_group(
    containerd: PrivateContainerd, rootfs: Path, io_dir: Path
) -> None:
    import secrets

    from actors.control._policy import SpecPolicy
    from actors.control.gateway import Gateway, GatewayConfig
    from actors.control.gateway_client import GatewayError, connect_gateway
    from actors.core._shimgroups import GROUP_ANNOTATION
    from actors.core.spec import decode_spec

    token = secrets.token_urlsafe(32)
    policy = SpecPolicy(default_rootfs=str(rootfs), allowed_rootfs_roots=(str(rootfs),))
    ids = [unique_id("gwgrp") for _ in range(2)]
    async with (
        open_client(
            containerd.address,
            NAMESPACE,
            state_dir=str(io_dir),
            shim_groups=ShimGroups(shims=1, max_per_shim=8),
        ) as client,
        trio.open_nursery() as nursery,
    ):
        gateway = Gateway(client, GatewayConfig(token=token, policy=policy, port=0))
        await nursery.start(gateway.serve)
        async with (
            _removing(client, ids),
            connect_gateway(f"ws://127.0.0.1:{gateway.port}", token) as gw,
        ):
            with trio.fail_after(60):
                # A request naming a group (the victim's) is refused before anything is made.
                with pytest.raises(GatewayError, match="unknown field `annotations`"):
                    await gw.call(
                        "container.create",
                        {
                            "id": ids[0],
                            "args": ["sleep", "60"],
                            "annotations": {GROUP_ANNOTATION: "victim"},
                        },
                    )
                pids = []
                for cid in ids:
                    await gw.call("container.create", {"id": cid, "args": ["sleep", "60"]})
                    pids.append((await gw.call("task.start", {"id": cid}))["pid"])
                assert shim_of(pids[0]) == shim_of(pids[1])
                groups = {
                    decode_spec((await client.load_container(cid)).spec_json).annotations.get(
                        GROUP_ANNOTATION
                    )
                    for cid in ids
                }
                assert len(groups) == 1 and None not in groups and "victim" not in groups
                for cid in ids:
                    await gw.call("task.kill", {"id": cid, "signal": 9})
                    assert (await gw.call("task.wait", {"id": cid}))["code"] == 137
                    assert (await gw.call("task.delete", {"id": cid}))["code"] == 137
                    await gw.call("container.delete", {"id": cid})
        nursery.cancel_scope.cancel()
