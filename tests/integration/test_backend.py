"""The Backend contract against the real containerd (issue 11's four scenarios).

- a moby-style Backend that deletes the task and container inside ``process_event`` for the
  init's exit runs to its end (code after the delete runs: 8 of 8);
- a slow Backend (50 ms per event) gets create, start and exit although the caller deletes
  right after ``wait``;
- an actor whose inbox overflowed resyncs with one Tasks.Get and reports the exit once;
- a container created by ``ctr`` in the namespace reaches the Backend, and the client
  adopts it so ``load_container`` costs 0 RPCs.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest
import trio

from actors import (
    Client,
    EventInfo,
    EventType,
    NotFound,
    TaskStatus,
    build_process,
    build_spec,
    open_client,
)
from actors.containerd.pb.containerd.events import task_pb2 as task_events

from ..conftest import NAMESPACE, unique_id
from ..helpers import Recorder, wait_gone

if TYPE_CHECKING:
    from pathlib import Path

    from actors import DirectIO
    from actors.containerd._embedded import PrivateContainerd

pytestmark = pytest.mark.integration


def rpc_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


async def until(predicate: object, timeout: float = 30) -> None:
    assert callable(predicate)
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


class MobyBackend(Recorder):
    """On the init's exit: load, task(), task.delete(), container.delete(), then more work,
    all inside process_event, as moby's daemon does (monitor.go handleContainerExit)."""

    def __init__(self) -> None:
        super().__init__()
        self.client: Client | None = None
        self.after_delete: list[str] = []
        self.deleted_codes: dict[str, int] = {}

    async def process_event(
        self, container_id: str, event_type: EventType, info: EventInfo
    ) -> None:
        await super().process_event(container_id, event_type, info)
        if event_type is not EventType.EXIT or info.process_id != container_id:
            return
        assert self.client is not None
        container = await self.client.load_container(container_id)
        task = await container.task()
        self.deleted_codes[container_id] = (await task.delete()).code
        await container.delete()
        await trio.sleep(0.05)  # the actor has ended by now; this must still run
        self.after_delete.append(container_id)


async def test_moby_style_backend_deleting_inside_process_event_runs_to_its_end(
    containerd: PrivateContainerd, rootfs: Path, io_dir: Path
) -> None:
    backend = MobyBackend()
    async with open_client(containerd.address, NAMESPACE, backend, state_dir=str(io_dir)) as client:
        backend.client = client
        ids = [unique_id(f"moby{i}") for i in range(8)]
        for i, cid in enumerate(ids):
            container = await client.new_container(
                cid, build_spec(rootfs, ["sh", "-c", f"exit {i}"])
            )
            await container.start()
        await until(lambda: len(backend.after_delete) == 8)
        assert backend.deleted_codes == {cid: i for i, cid in enumerate(ids)}
        assert sorted(backend.after_delete) == sorted(ids)
        stats = client.statistics().backend
        assert stats is not None and (stats.failed, stats.abandoned) == (0, 0)
        assert [c.id for c in client.containers() if c.id in ids] == []


class SlowBackend(Recorder):
    async def process_event(
        self, container_id: str, event_type: EventType, info: EventInfo
    ) -> None:
        await trio.sleep(0.05)
        await super().process_event(container_id, event_type, info)


async def test_slow_backend_gets_every_event_although_the_caller_deletes_right_after_wait(
    containerd: PrivateContainerd, rootfs: Path, io_dir: Path
) -> None:
    backend = SlowBackend()
    ids = [unique_id("slow") for _ in range(4)]
    async with open_client(containerd.address, NAMESPACE, backend, state_dir=str(io_dir)) as client:
        for cid in ids:
            container = await client.new_container(cid, build_spec(rootfs, ["sh", "-c", "exit 7"]))
            task = await container.start()
            with trio.fail_after(20):
                assert (await task.wait()).code == 7
            await task.delete()
            await container.delete()
        await until(lambda: all(len(backend.of(cid)) == 3 for cid in ids))
    for cid in ids:
        assert [t for t, _ in backend.of(cid)] == [
            EventType.CREATE,
            EventType.START,
            EventType.EXIT,
        ]
        assert backend.exits(cid) == [7]


async def test_an_overflowed_inbox_resyncs_once_and_reports_the_exit_once(
    containerd: PrivateContainerd, rootfs: Path, io_dir: Path
) -> None:
    """1,100 TaskOOM events (published through containerd's own exchange) and a real exit
    arrive while the actor is held in an attach_stdio callback: its inbox (1,024 events)
    overflows, and once free it asks Tasks.Get once and reports the exit exactly once."""
    recorder = Recorder()
    cid = unique_id("flood")
    async with open_client(
        containerd.address, NAMESPACE, recorder, state_dir=str(io_dir)
    ) as client:
        container = await client.new_container(cid, build_spec(rootfs, ["sleep", "300"]))
        task = await container.start()
        await until(lambda: len(recorder.of(cid)) == 2)
        busy, release = trio.Event(), trio.Event()

        async def hold_the_actor(io: DirectIO) -> None:
            busy.set()
            await release.wait()

        before = client.statistics().rpc.calls
        remote = client._remote
        payload = task_events.TaskOOM(container_id=cid).SerializeToString()
        async with trio.open_nursery() as nursery:

            async def exec_while_flooded() -> None:
                with pytest.raises(Exception, match=r"not running|not found|stopped"):
                    await task.exec("late", build_process(["true"]), attach_stdio=hold_the_actor)

            nursery.start_soon(exec_while_flooded)
            with trio.fail_after(10):
                await busy.wait()
            for _ in range(1100):
                await remote.events_publish("/tasks/oom", "containerd.events.TaskOOM", payload)
            os.kill(task.pid, signal.SIGKILL)
            await wait_gone(task.pid)
            await until(lambda: container.statistics().mailbox.events_dropped > 0)
            release.set()
        with trio.fail_after(20):
            status = await task.wait()
        assert status.code == 137
        assert status.oom_killed, "the OOM events that did get through were recorded"
        assert container.statistics().overflow_resyncs == 1
        delta = rpc_delta(before, client.statistics().rpc.calls)
        assert delta.get("Tasks.Get") == 1, delta
        assert "Tasks.List" not in delta, delta
        await until(lambda: recorder.exits(cid) == [137])
        await task.delete()
        await container.delete()
        await trio.sleep(0.2)
        assert recorder.exits(cid) == [137]


def ctr(daemon: PrivateContainerd, *args: str) -> None:
    done = subprocess.run(
        ["ctr", "-a", daemon.address, "-n", NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)


async def test_a_container_created_by_ctr_reaches_the_backend_and_is_adopted(
    containerd: PrivateContainerd, rootfs: Path, io_dir: Path
) -> None:
    recorder = Recorder()
    cid = unique_id("ctr")
    async with (
        open_client(containerd.address, NAMESPACE, recorder, state_dir=str(io_dir)) as client,
        client.events(container_ids=[cid]) as events,
    ):
        try:
            await trio.to_thread.run_sync(
                ctr,
                containerd,
                "run",
                "-d",
                "--null-io",
                "--rootfs",
                str(rootfs),
                cid,
                "/bin/sleep",
                "300",
            )
            with trio.fail_after(20):
                heard = [await events.receive(), await events.receive()]
            assert [e.type for e in heard] == [EventType.CREATE, EventType.START]
            await until(lambda: len(recorder.of(cid)) == 2)
            assert [i for _, i in recorder.of(cid)] == [e.info for e in heard], "same EventInfo"
            await until(lambda: client.statistics().adopted_from_events >= 1)
            before = client.statistics().rpc.calls
            container = await client.load_container(cid)
            assert rpc_delta(before, client.statistics().rpc.calls) == {}, "adopted: 0 RPCs"
            task = await container.task()
            assert rpc_delta(before, client.statistics().rpc.calls) == {}
            assert task.pid == heard[1].info.pid
            assert (await task.status()).status is TaskStatus.RUNNING
            await task.kill(signal.SIGKILL)
            with trio.fail_after(20):
                assert (await task.wait()).code == 137
            await task.delete()
            await container.delete()
            await until(lambda: recorder.exits(cid) == [137])
        finally:
            with trio.CancelScope(shield=True):
                for args in (
                    ("task", "kill", "-s", "SIGKILL", cid),
                    ("task", "rm", "-f", cid),
                    ("c", "rm", cid),
                ):
                    try:
                        await trio.to_thread.run_sync(functools.partial(ctr, containerd, *args))
                    except subprocess.CalledProcessError:
                        pass  # already gone: the test deleted it


async def test_a_container_removed_by_ctr_leaves_the_client(
    containerd: PrivateContainerd, rootfs: Path, io_dir: Path
) -> None:
    """`ctr c rm` behind our back: the client (and so the control plane's ps) drops it."""
    cid = unique_id("ctrrm")
    async with open_client(containerd.address, NAMESPACE, state_dir=str(io_dir)) as client:
        container = await client.new_container(cid, build_spec(rootfs, ["true"]))
        assert cid in [c.id for c in client.containers()]
        before = client.statistics().rpc.calls
        await trio.to_thread.run_sync(ctr, containerd, "c", "rm", cid)
        await until(lambda: cid not in [c.id for c in client.containers()], timeout=20)
        assert rpc_delta(before, client.statistics().rpc.calls) == {}, "learned from the event"
        with pytest.raises(NotFound):
            await container.start()
        with pytest.raises(NotFound):
            await client.load_container(cid)
