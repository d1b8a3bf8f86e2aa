"""The in-memory fake behaves like containerd, alone and under a real Client (no I/O)."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from google.protobuf.any_pb2 import Any as AnyPb

from actors import (
    AlreadyExists,
    EventType,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Spec,
    TaskStatus,
    Unavailable,
    build_spec,
)
from actors.containerd.pb.containerd.events import task_pb2 as task_events
from actors.containerd.pb.containerd.services.containers.v1 import containers_pb2
from actors.core import _commands as cmd
from actors.core._container import call_actor
from actors.core.events import READY_TOPIC, ready_filter, subscription_filter
from actors.core.spec import build_process, encode_process, encode_spec
from actors.testing import (
    IGNORE_SIGNALS,
    ContainerdFilter,
    FakeContainerd,
    FakeRemote,
    open_fake_client,
)

from .. import helpers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from actors import Client

NS = "fake"
LIFECYCLE_RPCS = {
    "Containers.Create": 1,
    "Tasks.Create": 1,
    "Tasks.Start": 1,
    "Tasks.Delete": 1,
    "Containers.Delete": 1,
}


class Recorder(helpers.Recorder):
    def types(self, container_id: str) -> list[EventType]:
        return [t for c, t, _ in self.events if c == container_id]


@pytest.fixture
def fake() -> FakeContainerd:
    return FakeContainerd()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(fake: FakeContainerd, recorder: Recorder, tmp_path: Path) -> AsyncIterator[Client]:
    async with open_fake_client(fake, NS, recorder, state_dir=tmp_path / "io") as c:
        yield c


def spec(args: list[str], env: list[str] | None = None) -> Spec:
    return build_spec("/", args, env=env)


def rpc_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def container_pb(container_id: str, args: list[str]) -> containers_pb2.Container:
    record = containers_pb2.Container(id=container_id)
    record.runtime.name = "io.containerd.runc.v2"
    record.spec.CopyFrom(
        AnyPb(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
            value=encode_spec(build_spec("/", args)),
        )
    )
    return record


async def started(remote: FakeRemote, container_id: str, args: list[str]) -> int:
    await remote.containers_create(container_pb(container_id, args))
    await remote.tasks_create(container_id)
    return await remote.tasks_start(container_id)


# -- through a Client ---------------------------------------------------------------------


async def test_lifecycle_is_five_rpcs_with_containerd_events(
    client: Client, recorder: Recorder
) -> None:
    before = client.statistics().rpc.calls
    container = await client.new_container("life", spec(["true"]))
    task = await container.start()
    assert task.pid > 0
    status = await task.wait()
    assert status.code == 0
    assert status.exited_at is not None
    deleted = await task.delete()
    assert deleted.code == 0
    await container.delete()
    assert rpc_delta(before, client.statistics().rpc.calls) == LIFECYCLE_RPCS
    await settle()
    assert recorder.types("life") == [EventType.CREATE, EventType.START, EventType.EXIT]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["true"], 0),
        (["/bin/false"], 1),
        (["sh", "-c", "exit 3"], 3),
        (["/bin/sh", "-c", "exit 300"], 44),
    ],
)
async def test_programs_that_exit_on_their_own(client: Client, args: list[str], code: int) -> None:
    container = await client.new_container("prog", spec(args))
    task = await container.start()
    assert (await task.wait()).code == code
    await task.delete()
    await container.delete()


async def test_sleep_exits_in_trio_time(client: Client, autojump_clock: object) -> None:
    container = await client.new_container("nap", spec(["sleep", "30"]))
    task = await container.start()
    begun = trio.current_time()
    assert (await task.wait()).code == 0
    assert trio.current_time() - begun == pytest.approx(30)
    await task.delete()
    await container.delete()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGKILL, 137), (signal.SIGTERM, 143)])
async def test_kill_exit_codes(client: Client, sig: int, code: int) -> None:
    container = await client.new_container("victim", spec(["sleep", "inf"]))
    task = await container.start()
    assert (await task.status()).status is TaskStatus.RUNNING
    await task.kill(sig)
    assert (await task.wait()).code == code
    with pytest.raises(NotFound):
        await task.kill(signal.SIGKILL)  # refused locally: the actor knows it exited
    await task.delete()
    await container.delete()


async def test_ignore_signals_survives_sigterm_not_sigkill(client: Client) -> None:
    container = await client.new_container("stubborn", spec(["sleep", "inf"], env=[IGNORE_SIGNALS]))
    task = await container.start()
    await task.kill(signal.SIGTERM)
    await settle()
    assert (await task.status(refresh=True)).status is TaskStatus.RUNNING
    status = await task.force_delete()
    assert status.code == 137
    await container.delete()


async def test_duplicate_ids(fake: FakeContainerd, client: Client, tmp_path: Path) -> None:
    await client.new_container("twin", spec(["sleep", "inf"]))
    with pytest.raises(AlreadyExists) as local:
        await client.new_container("twin", spec(["true"]))
    assert local.value.local
    async with open_fake_client(fake, NS, state_dir=tmp_path / "other", restore=False) as other:
        with pytest.raises(AlreadyExists) as remote:
            await other.new_container("twin", spec(["true"]))
        assert not remote.value.local
    raw = fake.remote(NS)
    await raw.tasks_create("twin")
    with pytest.raises(AlreadyExists):
        await raw.tasks_create("twin")
    await raw.tasks_start("twin")
    process = encode_process(build_process(["sleep", "inf"]))
    await raw.tasks_exec("twin", "e1", spec=process)
    with pytest.raises(AlreadyExists):
        await raw.tasks_exec("twin", "e1", spec=process)
    assert raw.statistics().failures == {"Tasks.Create": 1, "Tasks.Exec": 1}


async def test_exec_events_and_rpcs(client: Client, recorder: Recorder) -> None:
    container = await client.new_container("host", spec(["sleep", "inf"]))
    task = await container.start()
    before = client.statistics().rpc.calls
    process = await task.exec("probe", container.exec_spec(["sh", "-c", "exit 7"]))
    assert process.pid > 0
    assert (await process.wait()).code == 7
    assert (await process.delete()).code == 7
    assert rpc_delta(before, client.statistics().rpc.calls) == {
        "Tasks.Exec": 1,
        "Tasks.Start": 1,
        "Tasks.DeleteProcess": 1,
    }
    # Execs still running die with init, as in a PID namespace.
    lingering = await task.exec("linger", container.exec_spec(["sleep", "inf"]))
    assert sorted(await task.pids()) == sorted([task.pid, lingering.pid])
    assert [s.exec_id for s in await task.summary()] == ["", "linger"]
    await task.kill(signal.SIGKILL)
    assert (await lingering.wait()).code == 137
    assert (await task.wait()).code == 137
    await settle()
    execs = [(t, i.process_id) for c, t, i in recorder.events if i.process_id != "host"]
    assert execs == [
        (EventType.EXEC_ADDED, "probe"),
        (EventType.EXEC_STARTED, "probe"),
        (EventType.EXIT, "probe"),
        (EventType.EXEC_ADDED, "linger"),
        (EventType.EXEC_STARTED, "linger"),
        (EventType.EXIT, "linger"),
    ]
    await task.delete()
    await container.delete()


async def test_pause_resume_events_and_state(client: Client, recorder: Recorder) -> None:
    container = await client.new_container("freeze", spec(["sleep", "inf"]))
    task = await container.start()
    await task.pause()
    await settle()
    assert (await task.status()).status is TaskStatus.PAUSED
    assert (await task.status(refresh=True)).status is TaskStatus.PAUSED
    await task.resume()
    await settle()
    assert (await task.status()).status is TaskStatus.RUNNING
    stats = await task.stats()
    assert stats.cgroup_version == 2
    assert stats.pids.current == 1
    assert recorder.types("freeze")[-2:] == [EventType.PAUSED, EventType.RESUMED]
    raw = client._remote
    with pytest.raises(FailedPrecondition):
        await raw.tasks_resume("freeze")  # not paused: containerd refuses
    await task.force_delete()
    await container.delete()


async def test_stdin_eof_ends_cat(client: Client) -> None:
    container = await client.new_container("reader", spec(["cat"]))
    task = await container.start(with_stdin=True)
    with trio.move_on_after(0.05) as waited:
        await task.wait()
    assert waited.cancelled_caught
    before = client.statistics().rpc.calls
    with trio.fail_after(5):  # without Tasks.CloseIO, cat never sees EOF
        await task.close_stdin()
        assert (await task.wait()).code == 0
    assert rpc_delta(before, client.statistics().rpc.calls) == {"Tasks.CloseIO": 1}
    await task.delete()
    await container.delete()


async def test_injected_start_failure_is_cleaned_up(fake: FakeContainerd, client: Client) -> None:
    container = await client.new_container("flaky", spec(["sleep", "inf"]))
    fake.fail_next("Tasks.Start", Unavailable("Tasks.Start: injected"))
    with pytest.raises(Unavailable, match="injected"):
        await container.start()
    stats = client.statistics().rpc
    assert stats.failures == {"Tasks.Start": 1}
    # The actor killed and deleted the created task, so a second start works.
    assert stats.calls["Tasks.Kill"] == 1
    assert stats.calls["Tasks.Delete"] == 1
    task = await container.start()
    await task.force_delete()
    await container.delete()


async def test_injected_create_failure_changes_nothing(
    fake: FakeContainerd, client: Client
) -> None:
    fake.fail_next("Containers.Create", InvalidArgument("nope"), times=2)
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            await client.new_container("refused", spec(["true"]))
    assert await fake.remote(NS).containers_list() == []
    await client.new_container("refused", spec(["true"]))
    assert client.statistics().rpc.failures == {"Containers.Create": 2}


async def test_restore_adopts_and_reports_missed_exit(
    fake: FakeContainerd, recorder: Recorder, tmp_path: Path
) -> None:
    raw = fake.remote(NS)
    await started(raw, "old", ["sleep", "inf"])
    await started(raw, "done", ["sleep", "inf"])
    fake.exit_process(NS, "done", code=9)
    async with open_fake_client(fake, NS, recorder, state_dir=tmp_path / "io") as client:
        calls = client.statistics().rpc.calls
        assert calls["Containers.List"] == 1
        assert calls["Tasks.List"] == 1
        done = await (await client.load_container("done")).task()
        assert (await done.wait()).code == 9
        old = await (await client.load_container("old")).task()
        assert (await old.status()).status is TaskStatus.RUNNING
        await settle()
        assert recorder.exits("done") == [9]


async def test_resync_after_broken_stream_synthesizes_one_exit(
    fake: FakeContainerd, client: Client, recorder: Recorder
) -> None:
    container = await client.new_container("blind", spec(["sleep", "inf"]))
    task = await container.start()
    async with client.events(types=[EventType.EXIT]) as exits:
        fake.drop_events(True)
        fake.exit_process(NS, "blind", code=42)  # its TaskExit is lost
        fake.drop_events(False)
        await settle()
        assert recorder.exits("blind") == []
        fake.break_event_streams()
        with trio.fail_after(5):
            assert (await task.wait()).code == 42
            event = await exits.receive()
        assert event.synthetic
        # Another outage and resync must not report it again.
        fake.break_event_streams()
        with trio.fail_after(5):
            while client.statistics().router.subscriptions < 3 or client.statistics().resyncs < 2:
                await trio.sleep(0.01)
        await settle()
    assert recorder.exits("blind") == [42]
    stats = client.statistics()
    assert stats.router.reconnects == 2
    assert stats.rpc.failures["Events.Subscribe"] == 2
    await task.delete()
    await container.delete()


async def test_exit_seen_live_is_not_repeated_by_resync(
    fake: FakeContainerd, client: Client, recorder: Recorder
) -> None:
    container = await client.new_container("seen", spec(["sleep", "inf"]))
    task = await container.start()
    fake.exit_process(NS, "seen", code=5)
    assert (await task.wait()).code == 5
    fake.break_event_streams()
    with trio.fail_after(5):
        while client.statistics().resyncs < 1:
            await trio.sleep(0.01)
    await settle()
    assert recorder.exits("seen") == [5]


# -- the fake alone -----------------------------------------------------------------------


async def test_subscription_filter_namespace_topic_and_marker(fake: FakeContainerd) -> None:
    mine, theirs = fake.remote(NS), fake.remote("elsewhere")
    filters = [subscription_filter(NS), ready_filter(NS)]
    async with mine.events_subscribe(filters) as stream:
        await started(theirs, "foreign", ["true"])  # another namespace: filtered out
        await mine.events_publish("/other/topic", "x.Y", b"")  # not /tasks/: filtered out
        await theirs.events_publish(READY_TOPIC, "x.Marker", b"theirs")
        await mine.events_publish(READY_TOPIC, "x.Marker", b"mine")
        await started(mine, "local", ["sh", "-c", "exit 2"])
        received = [await stream.receive() for _ in range(4)]
        await mine.tasks_delete("local")  # /tasks/delete: a topic we do not map
        await settle()
        assert stream.pending == 0
    assert [(e.namespace, e.topic, e.event.type_url) for e in received] == [
        (NS, READY_TOPIC, "x.Marker"),
        (NS, "/tasks/create", "containerd.events.TaskCreate"),
        (NS, "/tasks/start", "containerd.events.TaskStart"),
        (NS, "/tasks/exit", "containerd.events.TaskExit"),
    ]
    exit_event = task_events.TaskExit()
    exit_event.ParseFromString(received[3].event.value)
    assert (exit_event.container_id, exit_event.id, exit_event.exit_status) == ("local", "local", 2)
    assert received[3].timestamp.seconds > 0
    assert fake.statistics().subscribers == 0


@pytest.mark.parametrize(
    ("filters", "namespace", "topic", "expected"),
    [
        ([], "a", "/x", True),
        (["namespace==a,topic~=|^/tasks/|"], "a", "/tasks/exit", True),
        (["namespace==a,topic~=|^/tasks/|"], "b", "/tasks/exit", False),
        (["namespace==a,topic~=|^/tasks/|"], "a", "/images/create", False),
        (['namespace==a,topic=="/m"', "topic~=|^/tasks/|"], "z", "/tasks/oom", True),
        (['namespace==a,topic=="/m"'], "a", "/m", True),
        (["namespace!=a"], "a", "/m", False),
        (["topic~=|a,b|"], "n", "xa,bx", True),
    ],
)
def test_filter_parser(filters: list[str], namespace: str, topic: str, expected: bool) -> None:
    assert ContainerdFilter(filters).match_event(namespace, topic) is expected


def test_filter_parser_rejects_garbage() -> None:
    for bad in ["namespace", "topic~=|unterminated", "topic~=|(|"]:
        with pytest.raises(InvalidArgument):
            ContainerdFilter([bad])


async def test_containerd_errors(fake: FakeContainerd) -> None:
    raw = fake.remote(NS)
    with pytest.raises(NotFound):
        await raw.tasks_get("ghost")
    with pytest.raises(NotFound):
        await raw.containers_delete("ghost")
    with pytest.raises(InvalidArgument):
        await raw.containers_create(container_pb("bad..id", ["true"]))
    await started(raw, "busy", ["sleep", "inf"])
    with pytest.raises(FailedPrecondition):
        await raw.tasks_delete("busy")
    with pytest.raises(FailedPrecondition):
        await raw.tasks_start("busy")
    await raw.tasks_kill("busy", signal.SIGKILL)
    with pytest.raises(NotFound, match="already finished"):
        await raw.tasks_kill("busy", signal.SIGKILL)
    waited = await raw.tasks_wait("busy")
    assert waited.exit_status == 137
    process = await raw.tasks_get("busy")
    assert (process.status, process.exit_status) == (3, 137)
    # The server does not guard Containers.Delete: the task is orphaned, as on containerd.
    await raw.containers_delete("busy")
    with pytest.raises(NotFound):
        await raw.tasks_get("busy")
    assert [t.container_id for t in await raw.tasks_list()] == ["busy"]
    assert await fake.remote("empty").tasks_list() == []
    with pytest.raises(FailedPrecondition, match="namespace is required"):
        await fake.remote("").containers_list()
    stats = raw.statistics()
    assert stats.total == sum(stats.calls.values())
    assert stats.failures == {
        "Tasks.Get": 2,
        "Containers.Delete": 1,
        "Containers.Create": 1,
        "Tasks.Delete": 1,
        "Tasks.Start": 1,
        "Tasks.Kill": 1,
    }


async def test_wait_blocks_until_exit_and_honours_deadline(
    fake: FakeContainerd, autojump_clock: object
) -> None:
    raw = fake.remote(NS)
    await started(raw, "slow", ["sleep", "10"])
    from actors import DeadlineExceeded

    with pytest.raises(DeadlineExceeded):
        await raw.tasks_wait("slow", deadline=1)
    assert (await raw.tasks_wait("slow")).exit_status == 0
    assert trio.current_time() == pytest.approx(10)


async def test_broken_subscription_raises_unavailable(fake: FakeContainerd) -> None:
    raw = fake.remote(NS)
    async with raw.events_subscribe([]) as stream:
        fake.oom(NS, "x")
        fake.break_event_streams()
        with pytest.raises(Unavailable):
            await stream.receive()
    fake.fail_next("Events.Subscribe", Unavailable("down"))
    with pytest.raises(Unavailable):
        async with raw.events_subscribe([]):
            pass  # pragma: no cover
    assert raw.statistics().failures == {"Events.Subscribe": 2}


async def test_an_exit_before_the_actor_exists_is_held_replayed_and_reported_once(
    tmp_path: Path,
) -> None:
    fake = FakeContainerd()
    state = str(tmp_path / "io")
    async with open_fake_client(fake, NS, state_dir=state, restore=False) as first:
        container = await first.new_container("held", build_spec(tmp_path, ["sleep", "300"]))
        pid = (await container.start()).pid
    recorder = Recorder()
    async with (
        open_fake_client(fake, NS, recorder, state_dir=state, restore=False) as second,
        second.events() as events,
    ):
        fake.exit_process(NS, "held", code=5)
        with trio.fail_after(5):
            first_seen = await events.receive()  # subscribers hear it at once
        assert (first_seen.type, first_seen.info.exit_code) == (EventType.EXIT, 5)
        with trio.fail_after(5):  # the client adopts the container on its first event
            while second.statistics().adopted_from_events < 1:
                await trio.sleep(0.01)
        assert second.statistics().held_events == 0  # replayed into the new actor
        before = second.statistics().rpc.calls
        loaded = await second.load_container("held")
        assert rpc_delta(before, second.statistics().rpc.calls) == {}
        task = await loaded.task()
        assert rpc_delta(before, second.statistics().rpc.calls) == {"Tasks.Get": 1}
        with trio.fail_after(5):
            assert (await task.wait()).code == 5
        assert task.pid == pid
        await trio.testing.wait_all_tasks_blocked()
        exits = [i.exit_code for c, t, i in recorder.events if c == "held" and t is EventType.EXIT]
        assert exits == [5]  # once, although it was both replayed and reconciled
        with trio.move_on_after(0.2) as idle:
            await events.receive()
        assert idle.cancelled_caught, "subscribers got nothing twice"
        await task.delete()
        await loaded.delete()


async def test_every_queued_command_is_answered_past_the_serve_batch(tmp_path: Path) -> None:
    """More commands than one serve batch (64) queued at once: none may be dropped."""
    fake = FakeContainerd()
    async with open_fake_client(fake, NS, state_dir=str(tmp_path / "io")) as client:
        container = await client.new_container("batch", build_spec(tmp_path, ["sleep", "300"]))
        task = await container.start()
        answered = 0

        async def ask() -> None:
            nonlocal answered
            await task.pids()  # an RPC: the actor yields mid-batch and the queue refills
            answered += 1

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(500):
                    nursery.start_soon(ask)
        assert answered == 500
        await task.kill(signal.SIGKILL)
        await task.wait()
        await task.delete()
        await container.delete()


class _Foreign(cmd.Command[None], tag="foreign", frozen=True, kw_only=True):
    """A command no container actor knows (not in ActorCommand)."""


async def test_a_command_outside_the_actors_union_is_refused_and_changes_nothing(
    client: Client,
) -> None:
    container = await client.new_container("strange", spec(["sleep", "inf"]))
    before = client.statistics().rpc.total
    with pytest.raises(InvalidArgument, match="unexpected command"):
        await call_actor(container._actor, _Foreign())
    assert client.statistics().rpc.total == before
    await container.delete()  # the actor still serves


def test_the_fake_has_no_channel_so_the_image_store_says_so(fake: FakeContainerd) -> None:
    from actors.errors import Unimplemented
    from actors.images._store import ContentStore

    with pytest.raises(Unimplemented, match="no gRPC channel"):
        ContentStore(fake.remote(NS))
    assert fake.remote(NS).statistics().total == 0


async def test_a_container_removed_by_another_client_leaves_containers(
    fake: FakeContainerd, client: Client, tmp_path: Path
) -> None:
    """Another client's Containers.Delete ends our actor: 0 RPCs of ours, callers told."""
    container = await client.new_container(
        "elsewhere", spec(["true"]), labels={"kept": "for the watcher"}
    )
    told: list[tuple[str, str]] = []
    stop = client.watch_deletions(lambda gone: told.append((gone.id, gone.labels["kept"])))
    other_remote = FakeRemote(fake, NS)
    before = client.statistics().rpc.calls
    await other_remote.containers_delete("elsewhere")
    with trio.fail_after(5):
        while [c.id for c in client.containers()]:
            await trio.sleep(0.01)
    assert rpc_delta(before, client.statistics().rpc.calls) == {}, "learned from the event"
    assert told == [("elsewhere", "for the watcher")]  # with its labels, for the cleanup
    stop()
    with pytest.raises(NotFound):
        await client.load_container("elsewhere")
    with pytest.raises(NotFound):
        await container.start()
    # Our own delete of another container is not mistaken for one from elsewhere.
    mine = await client.new_container("mine", spec(["true"]))
    client.watch_deletions(lambda gone: told.append((gone.id, "")))
    await mine.delete()
    assert [c.id for c in client.containers()] == []
    await trio.testing.wait_all_tasks_blocked()
    assert told == [("elsewhere", "for the watcher")]
