"""The first container lifecycle against the real containerd, with its RPC budget."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest
import trio

from actors import (
    AlreadyExists,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TaskStatus,
    build_spec,
    open_client,
)

from ..conftest import NAMESPACE, unique_id

if TYPE_CHECKING:
    from pathlib import Path

    from actors.containerd._embedded import PrivateContainerd

pytestmark = pytest.mark.integration

LIFECYCLE_RPCS = {
    "Containers.Create": 1,
    "Tasks.Create": 1,
    "Tasks.Start": 1,
    "Tasks.Delete": 1,
    "Containers.Delete": 1,
}


def rpc_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }


async def test_version(client: Client) -> None:
    version, revision = await client.version()
    assert version.startswith("1.") or version.startswith("2.")
    assert revision
    assert client.statistics().rpc.calls["Version.Version"] == 1


async def test_echo_exit_code_and_output(client: Client, rootfs: Path) -> None:
    spec = build_spec(rootfs, ["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"])
    container = await client.new_container(unique_id("echo"), spec)
    with trio.fail_after(20):
        task = await container.start()
        assert task.pid > 0
        assert task.io is not None
        assert task.io.stdout is not None
        assert task.io.stderr is not None
        stdout = await task.io.stdout.read_all()
        stderr = await task.io.stderr.read_all()
        status = await task.wait()
    assert stdout == b"hello\n"
    assert stderr == b"oops\n"
    assert status.code == 3
    assert status.exited_at is not None
    deleted = await task.delete()
    assert deleted.code == 3
    await container.delete()


async def test_lifecycle_costs_exactly_five_rpcs(client: Client, rootfs: Path) -> None:
    before = client.statistics().rpc.calls
    container = await client.new_container(unique_id("rpc"), build_spec(rootfs, ["/bin/true"]))
    with trio.fail_after(20):
        task = await container.start()
        status = await task.wait()
    assert status.code == 0
    await task.delete()
    await container.delete()
    after = client.statistics().rpc.calls
    assert rpc_delta(before, after) == LIFECYCLE_RPCS
    assert "Tasks.Wait" not in after
    assert "Tasks.Get" not in after
    assert client.statistics().router.subscriptions == 1


async def test_sigkill_gives_137(client: Client, rootfs: Path) -> None:
    container = await client.new_container(unique_id("kill"), build_spec(rootfs, ["sleep", "60"]))
    with trio.fail_after(20):
        task = await container.start()
        await task.kill(signal.SIGKILL)
        status = await task.wait()
    assert status.code == 137
    await task.delete()
    await container.delete()


async def test_sigterm_is_ignored_by_a_bare_pid1(client: Client, rootfs: Path) -> None:
    # PID 1 in a pid namespace gets no default signal actions: SIGTERM does nothing.
    container = await client.new_container(unique_id("term"), build_spec(rootfs, ["sleep", "60"]))
    task = await container.start()
    await task.kill(signal.SIGTERM)
    with trio.move_on_after(1.5) as waited:
        await task.wait()
    assert waited.cancelled_caught, "sleep as PID 1 should survive SIGTERM"
    assert (await task.status()).status is TaskStatus.RUNNING
    with trio.fail_after(20):
        await task.kill(signal.SIGKILL)
        assert (await task.wait()).code == 137
    await task.delete()
    await container.delete()


async def test_duplicate_id_is_already_exists(
    client: Client, rootfs: Path, containerd: PrivateContainerd, io_dir: Path
) -> None:
    container_id = unique_id("dup")
    spec = build_spec(rootfs, ["/bin/true"])
    container = await client.new_container(container_id, spec)
    with pytest.raises(AlreadyExists):
        await client.new_container(container_id, spec)  # refused locally
    async with open_client(
        containerd.address, NAMESPACE, state_dir=str(io_dir), restore=False
    ) as other:
        with pytest.raises(AlreadyExists) as info:
            await other.new_container(container_id, spec)  # refused by containerd
        assert not info.value.local
    await container.delete()


async def test_unknown_container_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        await client.load_container(unique_id("ghost"))


@pytest.mark.parametrize(
    "bad_id", ["", "../etc", "a/b", "-rf", "a..b", "x" * 77, "bad id", "ünïcode", "a\x00b"]
)
async def test_bad_id_is_rejected_before_any_rpc(client: Client, rootfs: Path, bad_id: str) -> None:
    before = client.statistics().rpc.total
    with pytest.raises(InvalidArgument) as info:
        await client.new_container(bad_id, build_spec(rootfs, ["/bin/true"]))
    assert info.value.local
    with pytest.raises(InvalidArgument):
        await client.load_container(bad_id)
    assert client.statistics().rpc.total == before


async def test_delete_container_with_live_task_is_refused_locally(
    client: Client, rootfs: Path
) -> None:
    container = await client.new_container(unique_id("busy"), build_spec(rootfs, ["sleep", "60"]))
    task = await container.start()
    before = client.statistics().rpc.total
    with pytest.raises(FailedPrecondition):
        await container.delete()
    with pytest.raises(FailedPrecondition):
        await task.delete()
    assert client.statistics().rpc.total == before
    with trio.fail_after(20):
        status = await task.force_delete()
    assert status.code == 137
    await container.delete()
