"""Unit tests (no I/O): ids, error mapping, event decoding, the mailbox."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio
import trio.testing
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from actors import errors
from actors.containerd.pb.containerd.events import task_pb2
from actors.core._ids import is_valid_id, validate_id
from actors.core._mailbox import Mailbox
from actors.core.events import (
    UNSUBSCRIBED_TOPICS,
    EventType,
    decode_event,
    subscription_filter,
)
from actors.testing import ContainerdFilter


@pytest.mark.parametrize("good", ["a", "A1", "web-1", "a.b_c-d", "x" * 76, "9"])
def test_valid_ids(good: str) -> None:
    assert is_valid_id(good)
    assert validate_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "-a", "a-", "a..b", "a/b", "../x", "x" * 77, "a b", "é", "a\x00", ".", "a__b"]
)
def test_invalid_ids(bad: str) -> None:
    assert not is_valid_id(bad)
    with pytest.raises(errors.InvalidArgument) as info:
        validate_id(bad)
    assert info.value.local
    assert "invalid container id" in str(info.value)


def test_non_string_id() -> None:
    with pytest.raises(errors.InvalidArgument, match="must be a string"):
        validate_id(42)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (Status.NOT_FOUND, errors.NotFound),
        (Status.ALREADY_EXISTS, errors.AlreadyExists),
        (Status.FAILED_PRECONDITION, errors.FailedPrecondition),
        (Status.INVALID_ARGUMENT, errors.InvalidArgument),
        (Status.UNAVAILABLE, errors.Unavailable),
        (Status.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (Status.CANCELLED, errors.RemoteCancelled),
        (Status.INTERNAL, errors.Internal),
        (Status.UNKNOWN, errors.Unknown),
    ],
)
def test_grpc_status_mapping(status: Status, cls: type[errors.ContainerdError]) -> None:
    mapped = errors.from_grpc_exception(GRPCError(status, "boom"), method="Tasks.Get")
    assert type(mapped) is cls
    assert mapped is not None
    assert str(mapped) == "Tasks.Get: boom"
    assert mapped.grpc_code == status.value
    assert not mapped.local


def test_transport_errors_map_to_unavailable_and_deadline() -> None:
    assert isinstance(errors.from_grpc_exception(StreamTerminatedError("x")), errors.Unavailable)
    assert isinstance(errors.from_grpc_exception(ConnectionRefusedError()), errors.Unavailable)
    assert isinstance(errors.from_grpc_exception(FileNotFoundError()), errors.Unavailable)
    assert isinstance(errors.from_grpc_exception(TimeoutError()), errors.DeadlineExceeded)
    assert errors.from_grpc_exception(KeyError("not ours")) is None


def test_we_subscribe_to_the_task_topics_moby_delivers() -> None:
    assert subscription_filter("ns1") == (
        'namespace==ns1,topic~=|^/tasks/|,topic!="/tasks/delete",topic!="/tasks/checkpointed"'
    )
    wanted = ContainerdFilter([subscription_filter("ns1")])
    for topic in ("/tasks/exit", "/tasks/create", "/tasks/oom", "/tasks/some-new-topic"):
        assert wanted.match_event("ns1", topic), topic
    for topic in UNSUBSCRIBED_TOPICS:
        assert not wanted.match_event("ns1", topic), topic
        # and what is not subscribed would not be delivered anyway
        assert decode_event(topic, "containerd.events.Task" + topic[7:].title(), b"") is None
    assert not wanted.match_event("ns2", "/tasks/exit")
    assert not wanted.match_event("ns1", "/images/create")


def _exit_payload() -> bytes:
    m = task_pb2.TaskExit(container_id="c1", id="e1", pid=42, exit_status=7)
    m.exited_at.seconds = 1_700_000_000
    m.exited_at.nanos = 5000
    return m.SerializeToString()


def test_decode_exit() -> None:
    event = decode_event(
        "/tasks/exit", "containerd.events.TaskExit", _exit_payload(), namespace="n"
    )
    assert event is not None
    assert event.type is EventType.EXIT
    assert event.info.container_id == "c1"
    assert event.info.process_id == "e1"
    assert event.info.pid == 42
    assert event.info.exit_code == 7
    assert event.info.exited_at == dt.datetime(2023, 11, 14, 22, 13, 20, 5, tzinfo=dt.UTC)


def test_decode_tolerates_prefixed_type_url_and_ignores_delete() -> None:
    assert (
        decode_event("/tasks/exit", "types.example/containerd.events.TaskExit", _exit_payload())
        is not None
    )
    delete = task_pb2.TaskDelete(container_id="c1").SerializeToString()
    assert decode_event("/tasks/delete", "containerd.events.TaskDelete", delete) is None


@pytest.mark.parametrize(
    ("type_name", "message", "expected"),
    [
        ("TaskCreate", task_pb2.TaskCreate(container_id="c", pid=3), (EventType.CREATE, "c", 3)),
        ("TaskStart", task_pb2.TaskStart(container_id="c", pid=4), (EventType.START, "c", 4)),
        ("TaskOOM", task_pb2.TaskOOM(container_id="c"), (EventType.OOM, "", 0)),
        (
            "TaskExecAdded",
            task_pb2.TaskExecAdded(container_id="c", exec_id="x"),
            (EventType.EXEC_ADDED, "x", 0),
        ),
        (
            "TaskExecStarted",
            task_pb2.TaskExecStarted(container_id="c", exec_id="x", pid=9),
            (EventType.EXEC_STARTED, "x", 9),
        ),
        ("TaskPaused", task_pb2.TaskPaused(container_id="c"), (EventType.PAUSED, "", 0)),
        ("TaskResumed", task_pb2.TaskResumed(container_id="c"), (EventType.RESUMED, "", 0)),
    ],
)
def test_decode_each_type(
    type_name: str, message: object, expected: tuple[EventType, str, int]
) -> None:
    payload = message.SerializeToString()  # type: ignore[attr-defined]
    event = decode_event("/tasks/x", f"containerd.events.{type_name}", payload)
    assert event is not None
    assert (event.type, event.info.process_id, event.info.pid) == expected
    assert event.info.container_id == "c"


def test_decode_garbage_raises_value_error() -> None:
    with pytest.raises(ValueError, match="undecodable"):
        decode_event("/tasks/exit", "containerd.events.TaskExit", b"\xff\xff\xff")


async def test_mailbox_keeps_one_order_and_bounds_both_kinds() -> None:
    box: Mailbox[str] = Mailbox(command_capacity=2, event_capacity=2)
    await box.send_command("c1")
    assert box.post_event("e1")
    await box.send_command("c2")
    assert box.post_event("e2")
    assert not box.post_event("e3")  # over the event bound: dropped, resync flagged
    assert box.needs_resync
    stats = box.statistics()
    assert (stats.depth, stats.commands_queued, stats.events_queued, stats.events_dropped) == (
        4,
        2,
        2,
        1,
    )
    blocked = False

    async def third_command() -> None:
        nonlocal blocked
        blocked = True
        await box.send_command("c3")
        blocked = False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third_command)
        await trio.testing.wait_all_tasks_blocked()
        assert blocked  # command capacity reached: the sender waits
        assert [await box.receive() for _ in range(4)] == ["c1", "e1", "c2", "e2"]
    assert await box.receive() == "c3"


async def test_mailbox_close_wakes_everyone() -> None:
    box: Mailbox[str] = Mailbox(command_capacity=1)
    await box.send_command("queued")
    outcomes: list[str] = []

    async def sender() -> None:
        try:
            await box.send_command("late")
        except trio.ClosedResourceError:
            outcomes.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert box.close() == ["queued"]
    assert outcomes == ["closed"]
    with pytest.raises(trio.EndOfChannel):
        await box.receive()
    assert not box.post_event("after close")


def test_collapse_unwraps_to_the_meaningful_exception() -> None:
    from actors.core._groups import collapse

    first, second = errors.Unavailable("a"), errors.Unavailable("b")
    assert collapse(ExceptionGroup("g", [first, ExceptionGroup("h", [second])])) is first
    bug = KeyError("bug")
    assert collapse(ExceptionGroup("g", [first, bug])) is bug
    two_bugs = ExceptionGroup("g", [KeyError(1), ValueError(2)])
    assert collapse(two_bugs) is two_bugs


async def test_open_client_without_containerd_raises_unavailable_alone(tmp_path: Path) -> None:
    from actors import open_client

    with pytest.raises(errors.Unavailable, match="socket not found"):
        async with open_client(str(tmp_path / "none.sock"), "x", state_dir=str(tmp_path)):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    "text",
    [
        "OCI runtime exec failed: exec failed: cannot exec in a stopped container: unknown",
        "container not running",
        "process already finished: not found",
    ],
)
def test_runtime_state_refusals_are_preconditions(text: str) -> None:
    """runc's "not in a state for this" reaches us as UNKNOWN; callers race exits with it."""
    mapped = errors.from_grpc_exception(GRPCError(Status.UNKNOWN, text), method="Tasks.Start")
    assert isinstance(mapped, errors.FailedPrecondition)
    assert str(mapped) == f"Tasks.Start: {text}"
    other = errors.from_grpc_exception(GRPCError(Status.UNKNOWN, "boom"))
    assert type(other) is errors.Unknown
