"""Container restart policies (docker's --restart), honoured by each container's actor."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from actors import Client, ContainerRestartPolicy, EventType, build_spec, open_client
from actors.containerd._embedded import PrivateContainerd
from actors.core._restart import (
    MANUALLY_STOPPED_LABEL,
    RESTART_COUNT_LABEL,
    RESTART_POLICY_LABEL,
)

from ..conftest import NAMESPACE, unique_id

pytestmark = pytest.mark.integration


async def test_on_failure_restarts_up_to_the_limit_at_four_rpcs_each(
    client: Client, rootfs: Path
) -> None:
    cid = unique_id("onfail")
    spec = build_spec(rootfs, ["sh", "-c", "exit 3"])
    policy = ContainerRestartPolicy.parse("on-failure:2")
    async with client.events(container_ids=[cid]) as events:
        before = client.statistics().rpc.calls
        container = await client.new_container(cid, spec, restart_policy=policy)
        await container.start()
        with trio.fail_after(60):
            starts = exits = 0
            async for event in events:
                starts += event.type is EventType.START
                exits += event.type is EventType.EXIT
                if exits == 3:
                    break
        status = container.restart_status()
        after = client.statistics().rpc.calls
    assert starts == 3
    assert (status.count, status.pending, status.policy) == (2, False, "on-failure:2")
    made = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    # Each restart: Tasks.Delete, Containers.Update (the count), Tasks.Create, Tasks.Start.
    assert made == {
        "Containers.Create": 1,
        "Tasks.Create": 3,
        "Tasks.Start": 3,
        "Tasks.Delete": 2,
        "Containers.Update": 2,
    }
    record = await client._remote.containers_get(cid)
    assert record.labels[RESTART_POLICY_LABEL] == "on-failure:2"
    assert record.labels[RESTART_COUNT_LABEL] == "2"
    task = await container.task()
    assert (await task.wait()).code == 3
    await task.delete()
    await container.delete()


async def test_a_user_kill_is_not_restarted_and_a_start_clears_it(
    client: Client, rootfs: Path
) -> None:
    cid = unique_id("always")
    spec = build_spec(rootfs, ["sleep", "300"])
    container = await client.new_container(
        cid, spec, restart_policy=ContainerRestartPolicy(mode="always")
    )
    with trio.fail_after(60):
        task = await container.start()
        await task.kill(9)
        assert (await task.wait()).code == 137
        status = container.restart_status()
        assert (status.pending, status.manually_stopped, status.count) == (False, True, 0)
        record = await client._remote.containers_get(cid)
        assert record.labels[MANUALLY_STOPPED_LABEL] == "true"
        await task.delete()
        task = await container.start()  # a user's start clears the mark
        assert container.restart_status().manually_stopped is False
        record = await client._remote.containers_get(cid)
        assert MANUALLY_STOPPED_LABEL not in record.labels
        await task.force_delete()
    await container.delete()


async def test_after_a_supervisor_restart_always_restarts_and_unless_stopped_does_not(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path
) -> None:
    always, unless = unique_id("rs-always"), unique_id("rs-unless")
    spec = build_spec(rootfs, ["sleep", "300"])
    with trio.fail_after(60):
        async with open_client(containerd.address, NAMESPACE, state_dir=str(io_dir)) as first:
            for cid, mode in ((always, "always"), (unless, "unless-stopped")):
                container = await first.new_container(
                    cid,
                    spec,
                    restart_policy=ContainerRestartPolicy(mode=mode),  # type: ignore[arg-type]
                )
                task = await container.start()
                await task.kill(9)
                await task.wait()
                assert not container.restart_status().pending
        # The next supervisor: docker restarts 'always' containers when the daemon starts,
        # even stopped by the user, and leaves a stopped 'unless-stopped' one alone.
        async with open_client(containerd.address, NAMESPACE, state_dir=str(io_dir)) as second:
            async with second.events(container_ids=[always], types=[EventType.START]) as events:
                restored = await second.load_container(always)
                if restored.restart_status().count == 0:
                    await events.receive()
            assert restored.restart_status().count == 1
            assert (await restored.task()).pid
            other = await second.load_container(unless)
            await (await other.task()).wait()
            status = other.restart_status()
            assert (status.count, status.pending) == (0, False)
            await (await restored.task()).force_delete()
            await restored.delete()
            await (await other.task()).delete()
            await other.delete()


def test_policy_syntax_and_decisions() -> None:
    from actors.core._restart import backoff, should_restart

    assert str(ContainerRestartPolicy.parse("on-failure:3")) == "on-failure:3"
    assert str(ContainerRestartPolicy.parse("unless-stopped")) == "unless-stopped"
    for bad in ("sometimes", "always:3", "on-failure:-1", ""):
        with pytest.raises(ValueError, match="restart policy"):
            ContainerRestartPolicy.parse(bad)
    on_failure = ContainerRestartPolicy.parse("on-failure:2")
    assert should_restart(on_failure, 1, 1, manually_stopped=False)
    assert not should_restart(on_failure, 1, 2, manually_stopped=False)
    assert not should_restart(on_failure, 0, 0, manually_stopped=False)
    assert not should_restart(on_failure, 1, 0, manually_stopped=True, restoring=True)
    always = ContainerRestartPolicy(mode="always")
    assert should_restart(always, 0, 5, manually_stopped=False)
    assert not should_restart(always, 0, 0, manually_stopped=True)
    assert should_restart(always, 0, 0, manually_stopped=True, restoring=True)
    unless = ContainerRestartPolicy(mode="unless-stopped")
    assert not should_restart(unless, 0, 0, manually_stopped=True, restoring=True)
    assert not should_restart(ContainerRestartPolicy(), 1, 0, manually_stopped=False)
    assert backoff(0) == 0.1 and backoff(1) == 0.2 and backoff(30) == 10.0
