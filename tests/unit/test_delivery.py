"""Backend delivery and exit bookkeeping through a real Client over the in-memory fake.

These force the orderings a real containerd shows only sometimes (an event after the RPC's
reply, an inbox overflowing behind a busy actor, an exit learned by a status refresh while
the stream lost it). The same scenarios run against the real daemon in test_backend.py.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from actors import (
    INIT_PROCESS_NAME,
    Client,
    EventInfo,
    EventStreamLagged,
    EventType,
    InvalidArgument,
    Spec,
    TaskStatus,
    build_process,
    build_spec,
)
from actors.containerd.pb.containerd.events import task_pb2 as task_events
from actors.core._delivery import BackendDelivery
from actors.core._subscribers import SubscriberHub
from actors.core.events import TaskEvent
from actors.testing import (
    IGNORE_SIGNALS,
    FakeContainerd,
    crash_actor,
    make_envelope,
    open_fake_client,
)

from .. import helpers
from .test_fake import container_pb, rpc_delta, started

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from actors import DirectIO

NS = "deliver"


class Recorder(helpers.Recorder):
    def types(self, container_id: str) -> list[EventType]:
        return [t for c, t, _ in self.events if c == container_id]


def spec(args: list[str], env: list[str] | None = None) -> Spec:
    return build_spec("/", args, env=env)


def in_flight(client: Client) -> int:
    stats = client.statistics().backend
    assert stats is not None
    return stats.in_flight


@pytest.fixture
def fake() -> FakeContainerd:
    return FakeContainerd(events_after_reply=True)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(fake: FakeContainerd, recorder: Recorder, tmp_path: Path) -> AsyncIterator[Client]:
    async with open_fake_client(fake, NS, recorder, state_dir=tmp_path / "io") as c:
        yield c


async def until(predicate: object, timeout: float = 10) -> None:
    assert callable(predicate)
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# -- the Backend's calls outlive the actor ----------------------------------------------------


class MobyBackend:
    """Handles the init's exit as moby's daemon does: delete the task and the container
    inside process_event, then carry on."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.finished: list[str] = []
        self.codes: dict[str, int] = {}

    async def process_event(
        self, container_id: str, event_type: EventType, info: EventInfo
    ) -> None:
        if event_type is not EventType.EXIT or info.process_id != container_id:
            return
        assert self.client is not None
        container = await self.client.load_container(container_id)
        task = await container.task()
        self.codes[container_id] = (await task.delete()).code
        await container.delete()
        await trio.sleep(0.01)  # more work after the delete: must not be cancelled
        self.finished.append(container_id)


async def test_a_backend_that_deletes_inside_process_event_runs_to_its_end(
    fake: FakeContainerd, tmp_path: Path
) -> None:
    backend = MobyBackend()
    async with open_fake_client(fake, NS, backend, state_dir=tmp_path / "io") as client:
        backend.client = client
        for i in range(8):
            container = await client.new_container(f"moby{i}", spec(["sh", "-c", f"exit {i}"]))
            await container.start()
        await until(lambda: len(backend.finished) == 8)
        assert backend.codes == {f"moby{i}": i for i in range(8)}
        assert client.containers() == []
        stats = client.statistics().backend
        assert stats is not None and stats.failed == 0 and stats.abandoned == 0


class SlowBackend(Recorder):
    async def process_event(
        self, container_id: str, event_type: EventType, info: EventInfo
    ) -> None:
        await trio.sleep(0.05)
        await super().process_event(container_id, event_type, info)


async def test_a_slow_backend_gets_every_event_although_the_caller_deletes_at_once(
    fake: FakeContainerd, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    backend = SlowBackend()
    async with open_fake_client(fake, NS, backend, state_dir=tmp_path / "io") as client:
        for i in range(5):
            container = await client.new_container(f"slow{i}", spec(["sh", "-c", "exit 2"]))
            task = await container.start()
            with trio.fail_after(5):
                assert (await task.wait()).code == 2
            await task.delete()
            await container.delete()
        await until(lambda: len(backend.events) == 15)
        stats = client.statistics().backend
        assert stats is not None and (stats.queued, stats.in_flight, stats.delivered) == (0, 0, 15)
    for i in range(5):
        assert backend.types(f"slow{i}") == [EventType.CREATE, EventType.START, EventType.EXIT]


async def test_one_stuck_container_holds_up_no_other_and_not_its_own_commands(
    fake: FakeContainerd, tmp_path: Path
) -> None:
    stuck = trio.Event()
    seen: list[tuple[str, EventType]] = []

    class Stuck:
        async def process_event(self, cid: str, kind: EventType, info: EventInfo) -> None:
            seen.append((cid, kind))
            if cid == "stuck":
                await stuck.wait()

    async with open_fake_client(
        fake, NS, Stuck(), state_dir=tmp_path / "io", backend_grace=5
    ) as client:
        first = await client.new_container("stuck", spec(["sleep", "inf"]))
        first_task = await first.start()
        other = await client.new_container("other", spec(["true"]))
        other_task = await other.start()
        with trio.fail_after(5):
            assert (await other_task.wait()).code == 0
            await first_task.kill(signal.SIGKILL)  # the stuck container's commands still run
            assert (await first_task.wait()).code == 137
        await until(
            lambda: (
                [k for c, k in seen if c == "other"]
                == [EventType.CREATE, EventType.START, EventType.EXIT]
            )
        )
        assert [k for c, k in seen if c == "stuck"] == [EventType.CREATE]
        stats = client.statistics().backend
        assert stats is not None and stats.in_flight == 1 and stats.queued == 2
        stuck.set()
        await until(lambda: len([c for c, _ in seen if c == "stuck"]) == 3)
        for task, container in ((first_task, first), (other_task, other)):
            await task.delete()
            await container.delete()


async def test_delivery_survives_a_crash_and_restart_of_the_actor(
    fake: FakeContainerd, tmp_path: Path
) -> None:
    gate = trio.Event()
    got: list[EventType] = []

    class Gated:
        async def process_event(self, cid: str, kind: EventType, info: EventInfo) -> None:
            await gate.wait()
            got.append(kind)

    async with open_fake_client(fake, NS, Gated(), state_dir=tmp_path / "io") as client:
        container = await client.new_container("phoenix", spec(["sleep", "inf"]))
        task = await container.start()
        await until(lambda: in_flight(client) == 1)  # create in flight, start queued
        await crash_actor(container)
        await until(lambda: client.statistics().actor_restarts == 1)
        await task.kill(signal.SIGKILL)
        with trio.fail_after(5):
            assert (await task.wait()).code == 137
        gate.set()
        await until(lambda: len(got) == 3)
        assert got == [EventType.CREATE, EventType.START, EventType.EXIT]
        stats = client.statistics().backend
        assert stats is not None and stats.abandoned == 0
        await task.delete()
        await container.delete()


async def test_close_waits_for_deliveries_within_the_grace_then_reports_what_it_abandoned(
    fake: FakeContainerd, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    calls: list[str] = []

    class Patient:
        async def process_event(self, cid: str, kind: EventType, info: EventInfo) -> None:
            await trio.sleep(1 if cid == "quick" else 3600)
            calls.append(cid)

    async with open_fake_client(
        fake, NS, Patient(), state_dir=tmp_path / "io", backend_grace=10
    ) as client:
        for cid in ("quick", "forever"):
            container = await client.new_container(cid, spec(["true"]))
            await container.start()
        await until(lambda: in_flight(client) == 2)
    stats = client.statistics().backend
    assert stats is not None
    assert calls == ["quick", "quick", "quick"], "the quick one finished during the grace"
    assert stats.delivered == 3
    assert stats.abandoned == 3, "forever: create in flight, start and exit queued"
    assert (stats.queued, stats.in_flight) == (0, 0)


async def test_the_backend_queue_bound_refuses_other_events_but_never_an_exit() -> None:
    release = trio.Event()

    class Blocked:
        async def process_event(self, cid: str, kind: EventType, info: EventInfo) -> None:
            await release.wait()

    async with trio.open_nursery() as nursery:
        delivery = BackendDelivery(Blocked(), nursery, limit=3)
        info = EventInfo(container_id="c")
        accepted = [delivery.submit("c", EventType.OOM, info) for _ in range(5)]
        assert accepted == [True, True, True, False, False]
        assert delivery.submit("c", EventType.EXIT, info), "an exit is always queued"
        stats = delivery.statistics()
        assert (stats.queued, stats.dropped, stats.limit) == (4, 2, 3)
        assert delivery.queued_for("c") == 4 and delivery.queued_for("d") == 0
        release.set()
        with trio.fail_after(5):
            await delivery.drain(5)
    assert delivery.statistics().delivered == 4
    with pytest.raises(ValueError, match="at least 1"):
        BackendDelivery(Blocked(), nursery, limit=0)


async def test_a_supervised_containers_delivery_task_waits_between_events() -> None:
    got: list[tuple[str, EventType]] = []

    class Quick:
        async def process_event(self, cid: str, kind: EventType, info: EventInfo) -> None:
            got.append((cid, kind))

    async with trio.open_nursery() as nursery:
        delivery = BackendDelivery(Quick(), nursery)
        delivery.own("owned")
        delivery.submit("owned", EventType.START, EventInfo(container_id="owned"))
        delivery.submit("stray", EventType.START, EventInfo(container_id="stray"))
        await trio.testing.wait_all_tasks_blocked()
        # Both delivered; lanes of different containers are not ordered against each other.
        assert sorted(got) == [("owned", EventType.START), ("stray", EventType.START)]
        assert len(nursery.child_tasks) == 1, "the owned lane parks; the stray one ended"
        delivery.submit("owned", EventType.EXIT, EventInfo(container_id="owned"))
        delivery.release("owned")
        await trio.testing.wait_all_tasks_blocked()
        assert got[-1] == ("owned", EventType.EXIT), "what was queued is still delivered"
        assert len(nursery.child_tasks) == 0
        delivery.release("never-seen")  # harmless
    assert delivery.statistics().delivered == 3


async def test_a_failing_backend_is_counted_and_delivery_continues(
    fake: FakeContainerd, tmp_path: Path
) -> None:
    got: list[EventType] = []

    class Flaky:
        async def process_event(self, cid: str, kind: EventType, info: EventInfo) -> None:
            got.append(kind)
            if kind is EventType.CREATE:
                raise RuntimeError("backend bug")

    async with open_fake_client(fake, NS, Flaky(), state_dir=tmp_path / "io") as client:
        container = await client.new_container("flaky", spec(["true"]))
        task = await container.start()
        await until(lambda: len(got) == 3)
        stats = client.statistics().backend
        assert stats is not None and (stats.failed, stats.delivered) == (1, 2)
        await task.delete()
        await container.delete()


# -- exits: every path publishes, exactly once -------------------------------------------------


async def test_an_exit_first_seen_by_a_status_refresh_is_published_once(
    fake: FakeContainerd, client: Client, recorder: Recorder
) -> None:
    container = await client.new_container("refresh", spec(["sleep", "inf"]))
    task = await container.start()
    async with client.events(types=[EventType.EXIT]) as exits:
        fake.drop_events(True)
        fake.exit_process(NS, "refresh", code=6)  # its TaskExit is lost
        fake.drop_events(False)
        state = await task.status(refresh=True)
        assert state.exit is not None and state.exit.code == 6
        with trio.fail_after(5):
            event = await exits.receive()
        assert (event.info.exit_code, event.synthetic) == (6, True)
        fake.break_event_streams()  # the resync after the outage must not report it again
        await until(lambda: client.statistics().resyncs >= 1)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.2) as idle:
            await exits.receive()
        assert idle.cancelled_caught
    await until(lambda: recorder.exits("refresh") == [6])
    with trio.fail_after(5):
        assert (await task.wait()).code == 6
    await task.delete()
    await container.delete()
    await trio.testing.wait_all_tasks_blocked()
    assert recorder.exits("refresh") == [6]


async def test_an_exit_first_learned_from_delete_is_published_and_a_late_copy_is_not(
    fake: FakeContainerd, client: Client, recorder: Recorder
) -> None:
    container = await client.new_container("late", spec(["sleep", "inf"]))
    task = await container.start()
    fake.hold_events()
    fake.exit_process(NS, "late", code=4)
    assert (await task.status(refresh=True)).status is TaskStatus.STOPPED
    assert (await task.delete()).code == 4
    await container.delete()
    assert fake.release_events() >= 1  # the real TaskExit arrives after the container is gone
    await trio.testing.wait_all_tasks_blocked()
    await until(lambda: recorder.exits("late") == [4])
    await trio.sleep(0.05)
    assert recorder.exits("late") == [4]


async def test_an_overflowed_inbox_resyncs_with_one_tasks_get_and_delivers_the_exit(
    fake: FakeContainerd, client: Client, recorder: Recorder
) -> None:
    container = await client.new_container("busy", spec(["sleep", "inf"]))
    task = await container.start()
    await until(lambda: len(recorder.types("busy")) == 2)
    busy = trio.Event()
    release = trio.Event()

    async def hold_the_actor(io: DirectIO) -> None:
        busy.set()
        await release.wait()

    before = client.statistics().rpc.calls
    async with trio.open_nursery() as nursery:

        async def exec_while_flooded() -> None:
            with pytest.raises(Exception, match="not running"):
                await task.exec("late", build_process(["true"]), attach_stdio=hold_the_actor)

        nursery.start_soon(exec_while_flooded)
        with trio.fail_after(5):
            await busy.wait()
        for _ in range(1100):
            fake.oom(NS, "busy")
        fake.exit_process(NS, "busy", code=3)
        await until(lambda: container.statistics().mailbox.events_dropped > 0)
        release.set()
    with trio.fail_after(10):
        status = await task.wait()
    assert (status.code, status.oom_killed) == (3, True)
    stats = container.statistics()
    assert stats.overflow_resyncs == 1
    delta = rpc_delta(before, client.statistics().rpc.calls)
    assert delta.get("Tasks.Get") == 1, delta
    assert "Tasks.List" not in delta, delta
    await until(lambda: recorder.exits("busy") == [3])
    await task.delete()
    await container.delete()
    await trio.testing.wait_all_tasks_blocked()
    assert recorder.exits("busy") == [3]


async def test_a_vanished_task_gets_a_synthetic_exit_with_an_error(
    fake: FakeContainerd, client: Client, recorder: Recorder
) -> None:
    container = await client.new_container("gone", spec(["sleep", "inf"]))
    task = await container.start()
    fake.drop_events(True)
    fake.exit_process(NS, "gone", code=1)
    await fake.remote(NS).tasks_delete("gone")  # another client removed it while we were blind
    fake.drop_events(False)
    fake.break_event_streams()
    with trio.fail_after(5):
        status = await task.wait()
    assert status.code == 255
    await until(lambda: recorder.exits("gone") == [255])
    (info,) = [i for c, t, i in recorder.events if c == "gone" and t is EventType.EXIT]
    assert "vanished" in info.error
    assert (await task.delete()).code == 255  # containerd has nothing left to delete
    await container.delete()


# -- containers we do not supervise ---------------------------------------------------------------


async def test_events_of_another_clients_container_reach_the_backend_and_it_is_adopted(
    fake: FakeContainerd, client: Client, recorder: Recorder
) -> None:
    async with client.events(container_ids=["foreign"]) as events:
        raw = fake.remote(NS)
        pid = await started(raw, "foreign", ["sleep", "inf"])
        with trio.fail_after(5):
            heard = [await events.receive(), await events.receive()]
    await until(lambda: recorder.types("foreign") == [EventType.CREATE, EventType.START])
    assert [e.info for e in heard] == [i for _, i in recorder.of("foreign")], "same EventInfo"
    await until(lambda: client.statistics().adopted_from_events == 1)
    before = client.statistics().rpc.calls
    container = await client.load_container("foreign")
    task = await container.task()
    assert rpc_delta(before, client.statistics().rpc.calls) == {}, "adopted: 0 RPCs"
    assert (task.pid, (await task.status()).status) == (pid, TaskStatus.RUNNING)
    await task.kill(signal.SIGKILL)
    with trio.fail_after(5):
        assert (await task.wait()).code == 137
    await task.delete()
    await container.delete()
    assert recorder.exits("foreign") == [137]


async def test_a_container_gone_before_adoption_costs_one_get(
    fake: FakeContainerd, client: Client, recorder: Recorder
) -> None:
    raw = fake.remote(NS)
    await raw.containers_create(container_pb("brief", ["true"]))
    await raw.tasks_create("brief")
    await raw.tasks_start("brief")
    await raw.tasks_delete("brief")
    await raw.containers_delete("brief")
    await until(
        lambda: recorder.types("brief") == [EventType.CREATE, EventType.START, EventType.EXIT]
    )
    await trio.testing.wait_all_tasks_blocked()
    assert client.statistics().rpc.calls.get("Containers.Get", 0) <= 3
    assert client.statistics().adopted_from_events == 0


async def test_an_unknown_task_topic_is_delivered_as_unknown(
    fake: FakeContainerd, client: Client, recorder: Recorder
) -> None:
    payload = task_events.TaskOOM(container_id="whatever").SerializeToString()
    fake.publish_envelope(
        make_envelope(NS, "/tasks/frobnicated", "containerd.events.TaskFrob", payload)
    )
    fake.publish(NS, task_events.TaskCheckpointed(container_id="whatever"))  # moby drops it
    await until(lambda: recorder.types("whatever") == [EventType.UNKNOWN])
    await trio.testing.wait_all_tasks_blocked()
    assert recorder.types("whatever") == [EventType.UNKNOWN]


# -- state that answers at once -------------------------------------------------------------------


async def test_pause_resume_kill_show_in_status_before_their_events(
    fake: FakeContainerd, client: Client
) -> None:
    container = await client.new_container("ack", spec(["sleep", "inf"], env=[IGNORE_SIGNALS]))
    task = await container.start()
    fake.hold_events()  # nothing containerd publishes reaches us until released
    before = client.statistics().rpc.calls
    await task.pause()
    assert (await task.status()).status is TaskStatus.PAUSED
    await task.resume()
    assert (await task.status()).status is TaskStatus.RUNNING
    await task.kill(signal.SIGTERM)  # ignored by the process: still running
    state = await task.status()
    assert (state.status, state.signalled) == (TaskStatus.RUNNING, signal.SIGTERM)
    assert rpc_delta(before, client.statistics().rpc.calls) == {
        "Tasks.Pause": 1,
        "Tasks.Resume": 1,
        "Tasks.Kill": 1,
    }
    fake.release_events()
    await task.kill(signal.SIGKILL)
    with trio.fail_after(5):
        assert (await task.wait()).code == 137
    await task.delete()
    await container.delete()


async def test_init_is_moby_s_name_for_the_init_and_reserved(client: Client) -> None:
    assert INIT_PROCESS_NAME == "init"
    container = await client.new_container("named", spec(["sleep", "inf"]))
    task = await container.start()
    assert task.id == container.id  # our process id of the init is the container id
    before = client.statistics().rpc.calls
    with pytest.raises(InvalidArgument, match="reserved"):
        await task.exec(INIT_PROCESS_NAME, build_process(["true"]))
    assert rpc_delta(before, client.statistics().rpc.calls) == {}
    await task.kill(signal.SIGKILL)
    with trio.fail_after(5):
        await task.wait()
    await task.delete()
    await container.delete()


# -- subscribers ---------------------------------------------------------------------------------


async def test_a_lagged_subscriber_with_a_tiny_buffer_is_dropped_and_told() -> None:
    """Mutant: a subscriber silently skipping instead of being dropped (it hung before)."""
    hub = SubscriberHub()
    lagging = hub.subscribe(buffer=1)
    keeping = hub.subscribe(buffer=8)
    for code in range(3):
        hub.publish(
            TaskEvent(
                type=EventType.EXIT,
                info=EventInfo(container_id="c", exit_code=code),
                topic="/tasks/exit",
            )
        )
    with trio.fail_after(5):
        assert (await lagging.receive()).info.exit_code == 0
        with pytest.raises(EventStreamLagged, match="more than 1 events behind"):
            await lagging.receive()
        assert [(await keeping.receive()).info.exit_code for _ in range(3)] == [0, 1, 2]
    stats = hub.statistics()
    assert (stats.subscribers, stats.dropped_subscribers, stats.delivered) == (1, 1, 4)
