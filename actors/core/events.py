"""Task events: moby's EventType/EventInfo, a pure decoder, and the per-namespace router.

containerd publishes task events on one exchange; we subscribe once per namespace to the
``/tasks/`` topics, minus the ones moby does not deliver (:data:`UNSUBSCRIBED_TOPICS`: with
moby's plain ``topic~=|^/tasks/|`` they would cross the wire, be decoded and dropped), and
decode each envelope with :func:`decode_event`, a pure function of (topic, type URL,
payload). The router hands each decoded event to a dispatch callback (the client routes it
into the owning container actor's mailbox, so events and commands for one container are
handled in one order).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import secrets
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from actors.containerd.pb.containerd.events import container_pb2
from actors.containerd.pb.containerd.events import task_pb2 as events_pb2

from ..errors import ClientClosed, ContainerdError
from ..images._names import IMAGE_TOPICS
from ._groups import collapse

if TYPE_CHECKING:
    from collections.abc import Callable

    from google.protobuf.timestamp_pb2 import Timestamp

    from actors.containerd.pb.containerd.services.events.v1.events_pb2 import Envelope

    from ..containerd._interface import ContainerdRemote, EnvelopeStream

__all__ = [
    "INIT_PROCESS_NAME",
    "UNSUBSCRIBED_TOPICS",
    "EventInfo",
    "EventType",
    "ExitStatus",
    "TaskEvent",
    "decode_event",
    "subscription_filter",
]

log = logging.getLogger("containerd_actors.events")

# moby's ``libcontainerd/types.InitProcessName``: the name its API gives a task's init
# process. On the wire (TaskExit.id, Tasks.Get) and in every EventInfo and ProcessState here,
# the init's process id is the *container id*, as containerd reports it; an exec's process id
# is its exec id. So "init" in moby's vocabulary is ``info.process_id == info.container_id``
# here, and "init" is refused as an exec id so the two can never be confused.
INIT_PROCESS_NAME: Final = "init"


class EventType(enum.StrEnum):
    """moby's libcontainerd event types (``/tasks/delete`` and others are not delivered)."""

    CREATE = "create"
    START = "start"
    EXIT = "exit"
    OOM = "oom"
    EXEC_ADDED = "exec-added"
    EXEC_STARTED = "exec-started"
    PAUSED = "paused"
    RESUMED = "resumed"
    # A ``/tasks/`` topic this library does not map (a newer containerd's); delivered with
    # only ``container_id`` decoded, so the Backend still hears that something happened.
    UNKNOWN = "unknown"


class EventInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What moby's EventInfo carries: ids, pid and, for exits, the status.

    ``error`` is empty for events containerd sent. A synthetic exit made up because the
    real one could not be learned (the task vanished while the event stream was down, or an
    exec ended with its task) says why here, and its ``exit_code`` is 255.
    """

    container_id: str
    process_id: str = ""
    pid: int = 0
    exit_code: int = 0
    exited_at: dt.datetime | None = None
    error: str = ""


class TaskEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A decoded containerd task event, with the envelope's topic, namespace and time."""

    type: EventType
    info: EventInfo
    topic: str
    namespace: str = ""
    timestamp: dt.datetime | None = None
    synthetic: bool = False


class ExitStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How a process ended: its exit code and when (None when containerd did not say)."""

    code: int
    exited_at: dt.datetime | None = None
    # containerd published a TaskOOM for this task before it exited (the kernel's OOM
    # killer acted in its cgroup); moby's ``State.OOMKilled``.
    oom_killed: bool = False


def subscription_filter(namespace: str) -> str:
    """This namespace's task events, minus the topics moby does not deliver (one AND filter)."""
    excluded = "".join(f',topic!="{topic}"' for topic in UNSUBSCRIBED_TOPICS)
    return f"namespace=={namespace},topic~=|^/tasks/|{excluded}"


# containerd sends nothing when a subscription is registered, so we publish a marker event
# (ORed into our filters) until it comes back: then no event after that point can be missed.
READY_TOPIC: Final = "/containerd-actors/subscribed"
READY_TYPE_URL: Final = "containerd-actors.SubscriptionMarker"


def ready_filter(namespace: str) -> str:
    return f'namespace=={namespace},topic=="{READY_TOPIC}"'


# A container record removed by any client (``ctr c rm``, another program): its actor must
# end, or ``containers()`` (and the control plane's ``ps``) would list it forever.
CONTAINER_DELETE_TOPIC: Final = "/containers/delete"


def container_delete_filter(namespace: str) -> str:
    return f'namespace=={namespace},topic=="{CONTAINER_DELETE_TOPIC}"'


# Image records created, re-pointed or removed by any client (``ctr images tag --force``,
# ``ctr images rm``, our own pulls), IMAGE_TOPICS: the client's image name cache forgets
# that name (actors.images._names).


def image_filter(namespace: str) -> str:
    return f"namespace=={namespace},topic~=|^/images/|"


def decode_container_delete(value: bytes) -> str:
    """The id in a ``containerd.events.ContainerDelete`` payload (ValueError if malformed)."""
    message = container_pb2.ContainerDelete()
    try:
        message.ParseFromString(value)
    except Exception as exc:  # protobuf raises its own DecodeError type
        raise ValueError(f"undecodable ContainerDelete payload: {exc}") from exc
    return message.id


EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp_to_datetime(seconds: int, nanos: int) -> dt.datetime | None:
    """A protobuf Timestamp as an aware datetime; the zero timestamp means 'not set'."""
    if seconds <= 0 and nanos <= 0:
        return None
    return EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)


def _when(ts: Timestamp) -> dt.datetime | None:
    return timestamp_to_datetime(int(ts.seconds), int(ts.nanos))


def _create(m: events_pb2.TaskCreate) -> tuple[EventType, EventInfo]:
    info = EventInfo(container_id=m.container_id, process_id=m.container_id, pid=m.pid)
    return EventType.CREATE, info


def _start(m: events_pb2.TaskStart) -> tuple[EventType, EventInfo]:
    info = EventInfo(container_id=m.container_id, process_id=m.container_id, pid=m.pid)
    return EventType.START, info


def _exit(m: events_pb2.TaskExit) -> tuple[EventType, EventInfo]:
    info = EventInfo(
        container_id=m.container_id,
        process_id=m.id or m.container_id,
        pid=m.pid,
        exit_code=m.exit_status,
        exited_at=_when(m.exited_at),
    )
    return EventType.EXIT, info


def _oom(m: events_pb2.TaskOOM) -> tuple[EventType, EventInfo]:
    return EventType.OOM, EventInfo(container_id=m.container_id)


def _exec_added(m: events_pb2.TaskExecAdded) -> tuple[EventType, EventInfo]:
    return EventType.EXEC_ADDED, EventInfo(container_id=m.container_id, process_id=m.exec_id)


def _exec_started(m: events_pb2.TaskExecStarted) -> tuple[EventType, EventInfo]:
    info = EventInfo(container_id=m.container_id, process_id=m.exec_id, pid=m.pid)
    return EventType.EXEC_STARTED, info


def _paused(m: events_pb2.TaskPaused) -> tuple[EventType, EventInfo]:
    return EventType.PAUSED, EventInfo(container_id=m.container_id)


def _resumed(m: events_pb2.TaskResumed) -> tuple[EventType, EventInfo]:
    return EventType.RESUMED, EventInfo(container_id=m.container_id)


def _unknown(m: events_pb2.TaskOOM) -> tuple[EventType, EventInfo]:
    return EventType.UNKNOWN, EventInfo(container_id=m.container_id)


# Task events containerd sends that moby does not deliver (it logs them): not UNKNOWN, and
# not even subscribed to (the single place to change if a state machine wants one of them).
_NOT_DELIVERED_TOPICS: Final = {
    "containerd.events.TaskDelete": "/tasks/delete",
    "containerd.events.TaskCheckpointed": "/tasks/checkpointed",
}
_NOT_DELIVERED: Final = frozenset(_NOT_DELIVERED_TOPICS)
UNSUBSCRIBED_TOPICS: Final = tuple(_NOT_DELIVERED_TOPICS.values())
# Every containerd task event carries the container id in field 1 (a string); TaskOOM is
# exactly that, so it reads the id of an event type we do not know.
_UNKNOWN_DECODER: Final = (events_pb2.TaskOOM, _unknown)


# Any: each entry pairs a message type with the projection typed for exactly that type,
# a pairing a dict's value type cannot express.
_DECODERS: Final[dict[str, tuple[type[Any], Callable[[Any], tuple[EventType, EventInfo]]]]] = {
    "containerd.events.TaskCreate": (events_pb2.TaskCreate, _create),
    "containerd.events.TaskStart": (events_pb2.TaskStart, _start),
    "containerd.events.TaskExit": (events_pb2.TaskExit, _exit),
    "containerd.events.TaskOOM": (events_pb2.TaskOOM, _oom),
    "containerd.events.TaskExecAdded": (events_pb2.TaskExecAdded, _exec_added),
    "containerd.events.TaskExecStarted": (events_pb2.TaskExecStarted, _exec_started),
    "containerd.events.TaskPaused": (events_pb2.TaskPaused, _paused),
    "containerd.events.TaskResumed": (events_pb2.TaskResumed, _resumed),
}


def decode_event(
    topic: str,
    type_url: str,
    value: bytes,
    *,
    namespace: str = "",
    timestamp: dt.datetime | None = None,
) -> TaskEvent | None:
    """Decode one envelope payload; None for events moby does not deliver (e.g. delete).

    Type URLs are bare proto names on containerd 1.6; a ``host/`` prefix is tolerated.
    Another ``/tasks/`` topic decodes as :attr:`EventType.UNKNOWN` with its container id.
    A payload that does not parse raises ``ValueError`` (the router counts and skips it).
    """
    name = type_url.rsplit("/", 1)[-1]
    entry = _DECODERS.get(name)
    if entry is None:
        if name in _NOT_DELIVERED or not topic.startswith("/tasks/"):
            return None
        entry = _UNKNOWN_DECODER
    message_type, project = entry
    message = message_type()
    try:
        message.ParseFromString(value)
    except Exception as exc:  # protobuf raises its own DecodeError type
        raise ValueError(f"undecodable {name} payload on {topic}: {exc}") from exc
    event_type, info = project(message)
    return TaskEvent(
        type=event_type, info=info, topic=topic, namespace=namespace, timestamp=timestamp
    )


def decode_envelope(envelope: Envelope) -> TaskEvent | None:
    """Decode a ``containerd.services.events.v1.Envelope`` message."""
    return decode_event(
        envelope.topic,
        envelope.event.type_url,
        envelope.event.value,
        namespace=envelope.namespace,
        timestamp=_when(envelope.timestamp),
    )


class RouterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of the event router since the client opened."""

    connected: bool
    subscriptions: int
    events_in: int
    events_routed: int
    events_ignored: int
    undecodable: int
    reconnects: int


class EventRouter:
    """Reads the namespace's event stream and hands each task event to ``dispatch``.

    ``dispatch`` must not block (it is a plain function): the stream is never held up by a
    slow consumer. When the stream breaks, the router waits for containerd to serve again
    (health check with capped backoff), resubscribes and calls ``on_resubscribed`` so the
    owner can reconcile what it missed while blind.
    """

    def __init__(
        self,
        remote: ContainerdRemote,
        dispatch: Callable[[TaskEvent], None],
        *,
        on_resubscribed: Callable[[], None] | None = None,
        on_container_deleted: Callable[[str], None] | None = None,
        on_image_event: Callable[[str, bytes], None] | None = None,
        on_live: Callable[[bool], None] | None = None,
        max_backoff: float = 2.0,
        confirm_timeout: float = 10.0,
    ) -> None:
        self._remote = remote
        self._dispatch = dispatch
        self._on_resubscribed = on_resubscribed
        self._on_container_deleted = on_container_deleted
        # (topic, payload) of /images/ events, and whether the stream is confirmed live:
        # a cache fed by these events may serve only while nothing can be missed.
        self._on_image_event = on_image_event
        self._on_live = on_live
        self._max_backoff = max_backoff
        self._confirm_timeout = confirm_timeout
        self._filter = subscription_filter(remote.namespace)
        self._connected = False
        self._subscriptions = 0
        self._events_in = 0
        self._events_routed = 0
        self._events_ignored = 0
        self._undecodable = 0
        self._reconnects = 0

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(
            connected=self._connected,
            subscriptions=self._subscriptions,
            events_in=self._events_in,
            events_routed=self._events_routed,
            events_ignored=self._events_ignored,
            undecodable=self._undecodable,
            reconnects=self._reconnects,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, report ready once the subscription is live, and keep it alive."""
        first = True
        namespace = self._remote.namespace
        filters = [self._filter, ready_filter(namespace)]
        if self._on_container_deleted is not None:
            filters.append(container_delete_filter(namespace))
        if self._on_image_event is not None:
            filters.append(image_filter(namespace))  # ORed into the same Subscribe
        while True:
            try:
                try:
                    async with (
                        self._remote.events_subscribe(filters) as stream,
                        trio.open_nursery() as nursery,
                    ):
                        self._subscriptions += 1
                        marker = secrets.token_hex(16).encode()
                        seen = trio.Event()
                        nursery.start_soon(self._pump, stream, marker, seen)
                        await self._confirm_subscription(marker, seen)
                        self._connected = True
                        if self._on_live is not None and seen.is_set():
                            self._on_live(True)
                        if first:
                            first = False
                            task_status.started()
                        elif self._on_resubscribed is not None:
                            self._on_resubscribed()
                except BaseExceptionGroup as group:
                    raise collapse(group) from None
            except ClientClosed:
                return
            except (ContainerdError, trio.EndOfChannel) as exc:
                if first:
                    raise  # never subscribed: let open_client fail instead of hanging
                log.warning("event stream for %s broke: %s", namespace, exc)
            finally:
                self._connected = False
                if self._on_live is not None:
                    self._on_live(False)
            self._reconnects += 1
            await self._wait_serving()

    async def _confirm_subscription(self, marker: bytes, seen: trio.Event) -> None:
        delay = 0.01
        with trio.move_on_after(self._confirm_timeout):
            while not seen.is_set():
                await self._remote.events_publish(READY_TOPIC, READY_TYPE_URL, marker)
                with trio.move_on_after(delay):
                    await seen.wait()
                delay = min(delay * 2, 0.5)
        if not seen.is_set():
            log.warning("event subscription for %s not confirmed", self._remote.namespace)

    async def _pump(self, stream: EnvelopeStream, marker: bytes, seen: trio.Event) -> None:
        while True:
            envelope = await stream.receive()
            self._events_in += 1
            if envelope.topic == READY_TOPIC:
                self._events_ignored += 1
                if envelope.event.value == marker:
                    seen.set()
                continue
            if envelope.topic == CONTAINER_DELETE_TOPIC:
                self._container_deleted(envelope.event.value)
                continue
            if envelope.topic in IMAGE_TOPICS:
                self._events_ignored += 1  # not a task event
                if self._on_image_event is not None:
                    self._on_image_event(envelope.topic, envelope.event.value)
                continue
            try:
                event = decode_envelope(envelope)
            except ValueError:
                self._undecodable += 1
                log.warning("skipping undecodable event on %s", envelope.topic)
                continue
            if event is None:
                self._events_ignored += 1
                continue
            self._events_routed += 1
            self._dispatch(event)

    def _container_deleted(self, value: bytes) -> None:
        self._events_ignored += 1  # not a task event: counted apart from the routed ones
        try:
            container_id = decode_container_delete(value)
        except ValueError:
            self._undecodable += 1
            log.warning("skipping undecodable event on %s", CONTAINER_DELETE_TOPIC)
            return
        if self._on_container_deleted is not None and container_id:
            self._on_container_deleted(container_id)

    async def _wait_serving(self) -> None:
        delay = 0.05
        while True:
            try:
                if await self._remote.health_check(deadline=2.0) == 1:
                    return
            except ClientClosed:
                raise
            except ContainerdError:
                pass
            await trio.sleep(delay)
            delay = min(self._max_backoff, delay * 2)
