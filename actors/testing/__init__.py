"""An in-memory fake containerd, for unit tests of logic and synthetic-scale benchmarks.

:class:`FakeContainerd` keeps containers and tasks for any number of namespaces and hands out
:class:`FakeRemote` objects shaped exactly like :class:`actors.containerd._remote.Remote`
(both satisfy the :class:`~actors.containerd._interface.ContainerdRemote` protocol, checked
by mypy): the same requests (built by the remote's own ``*_request`` functions), the same
protobuf messages in and out, our own error
classes raised where containerd 1.6 raises them, and the same ``Service.Method`` counters.
A client runs over it unchanged (see :func:`open_fake_client`), so routing, supervision and
RPC budgets can be tested without a daemon, and the router can be driven far harder than a
real containerd could drive it.

Processes are simulated from their argv, in Trio time (a ``MockClock`` works):

==========================  ==================================================
argv                        behaviour
==========================  ==================================================
``true`` / ``false``        exits 0 / 1 as soon as it starts
``sh -c "exit N"``          exits N as soon as it starts
``sleep S``                 exits 0 after S seconds (``sleep inf``: never)
``cat``                     exits 0 when its stdin is closed (Tasks.CloseIO)
anything else               runs until killed
==========================  ==================================================

A signal ends a process with 128+signal (137 for SIGKILL) unless its environment contains
``IGNORE_SIGNALS`` (then only SIGKILL does). When init exits, the execs still running die
with it, as they do in a real PID namespace. The FIFO paths in requests are recorded and
reported back but never opened: the fake produces no output.

Failures are scriptable: :meth:`FakeContainerd.fail_next` makes the next call of one method
fail, :meth:`FakeContainerd.break_event_streams` ends every subscription with Unavailable, and
:meth:`FakeContainerd.drop_events` makes the event exchange lose everything published.

Event timing is a switch: by default an RPC publishes its events inside its handler, before
it replies. With ``FakeContainerd(events_after_reply=True)`` they are published only after
the caller has its reply (as a real containerd may do), and :meth:`FakeContainerd.hold_events`
keeps every event back until :meth:`FakeContainerd.release_events`, so a test can force the
orderings the real daemon only sometimes shows.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import math
import os
import signal as signal_module
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec
import trio
from google.protobuf.any_pb2 import Any as AnyPb

from actors.containerd.pb.containerd.cgroups.v2 import metrics_pb2 as cgroups_v2_pb2
from actors.containerd.pb.containerd.events import container_pb2 as container_events_pb2
from actors.containerd.pb.containerd.events import task_pb2 as task_events_pb2
from actors.containerd.pb.containerd.runc.options import oci_pb2
from actors.containerd.pb.containerd.services.containers.v1 import containers_pb2
from actors.containerd.pb.containerd.services.events.v1 import events_pb2
from actors.containerd.pb.containerd.services.tasks.v1 import tasks_pb2
from actors.containerd.pb.containerd.services.version.v1 import version_pb2
from actors.containerd.pb.containerd.types import metrics_pb2
from actors.containerd.pb.containerd.types.task import task_pb2

from ..containerd._remote import (
    DEFAULT_TIMEOUT,
    RemoteStatistics,
    checkpoint_task_request,
    create_task_request,
    exec_process_request,
    update_task_request,
)
from ..core._client import Client, run_client
from ..core._delivery import DEFAULT_DELIVERY_GRACE, DEFAULT_DELIVERY_LIMIT
from ..core._ids import is_valid_id, validate_id
from ..core._supervision import RestartPolicy
from ..errors import (
    AlreadyExists,
    ClientClosed,
    ContainerdError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)
from ._crash import crash_actor
from ._filters import ContainerdFilter
from ._state import (
    _PROCESS_DECODER,
    _SPEC_DECODER,
    _STATUS_CREATED,
    _STATUS_PAUSED,
    _STATUS_RUNNING,
    _STATUS_STOPPED,
    IGNORE_SIGNALS,
    _Namespace,
    _Proc,
    _Task,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence

    from google.protobuf.message import Message
    from grpclib.client import Channel

    from ..containerd._interface import ContainerdRemote
    from ..containerd._mounts import Mount
    from ..containerd._streams import Duplex, ResponseStream
    from ..core._container import Backend
    from ..core._shimgroups import ShimGroups

__all__ = [
    "FAKE_VERSION",
    "IGNORE_SIGNALS",
    "ContainerdFilter",
    "FakeContainerd",
    "FakeEventStream",
    "FakeRemote",
    "FakeStatistics",
    "crash_actor",
    "envelopes_for",
    "make_envelope",
    "open_fake_client",
]

_T = TypeVar("_T")

FAKE_VERSION: Final = "1.6.20-fake"

_SERVING: Final = 1
_NOT_SERVING: Final = 2
_FIRST_PID: Final = 10_000
# A real stream hands over messages in bursts (one socket read holds many), so the fake
# yields to the scheduler only every few messages: its own scheduling must not be what a
# fan-out benchmark measures.
_YIELD_EVERY: Final = 64


class FakeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What the fake daemon did, across every namespace and remote."""

    namespaces: int
    containers: int
    tasks: int
    subscribers: int
    events_published: int
    events_delivered: int
    events_dropped: int
    timers_pending: int


# -- event exchange -----------------------------------------------------------------------


class FakeEventStream:
    """One subscription: envelopes in publish order, as the real remote's ``EventStream``."""

    def __init__(self, remote: FakeRemote, event_filter: ContainerdFilter) -> None:
        self._remote = remote
        self.filter = event_filter
        self._queue: collections.deque[events_pb2.Envelope] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._broken: ContainerdError | None = None
        self._closed = False
        self._since_yield = 0

    def _offer(self, envelope: events_pb2.Envelope) -> bool:
        if self._broken is not None or self._closed:
            return False
        self._queue.append(envelope)
        if self._lot:
            self._lot.unpark()
        return True

    def _break(self, error: ContainerdError) -> None:
        # A broken connection loses whatever was still in flight.
        self._queue.clear()
        self._broken = error
        self._lot.unpark_all()

    def _close(self) -> None:
        self._closed = True
        self._queue.clear()
        self._lot.unpark_all()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def receive(self) -> events_pb2.Envelope:
        """The next envelope; Unavailable once the stream is broken."""
        while not self._queue:
            self._raise_if_ended()
            self._since_yield = 0
            await self._lot.park()
        self._raise_if_ended()
        self._since_yield += 1
        if self._since_yield >= _YIELD_EVERY:
            self._since_yield = 0
            await trio.lowlevel.checkpoint()
            self._raise_if_ended()
            if not self._queue:
                return await self.receive()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        return self._queue.popleft()

    def _raise_if_ended(self) -> None:
        if self._closed:
            raise ClientClosed("Events.Subscribe: the subscription is closed")
        if self._broken is not None:
            self._remote._failures["Events.Subscribe"] += 1
            raise self._broken


# -- the daemon ---------------------------------------------------------------------------


class FakeContainerd:
    """In-memory containers, tasks and an event exchange for one or more namespaces.

    Args:
        rpc_latency: seconds each RPC takes (Trio time); 0 means "just a checkpoint".
        version: what Version.Version reports.
    """

    def __init__(
        self,
        *,
        rpc_latency: float = 0.0,
        version: str = FAKE_VERSION,
        events_after_reply: bool = False,
    ) -> None:
        self.rpc_latency = rpc_latency
        self.events_after_reply = events_after_reply
        self._holding = False
        self._held: list[events_pb2.Envelope] = []
        # Envelopes an RPC handler emitted, published once its caller has the reply.
        self._in_rpc: list[events_pb2.Envelope] | None = None
        self.version = version
        self.serving = True
        self._namespaces: dict[str, _Namespace] = {}
        self._streams: list[FakeEventStream] = []
        self._failures: dict[str, collections.deque[BaseException]] = {}
        self._dropping = False
        self._next_pid = _FIRST_PID
        self._published = 0
        self._delivered = 0
        self._dropped = 0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = 0
        self._timer_scope: trio.CancelScope | None = None
        self._timer_token: trio.lowlevel.TrioToken | None = None

    # -- public controls ----------------------------------------------------------------

    def remote(self, namespace: str, *, default_deadline: float = DEFAULT_TIMEOUT) -> FakeRemote:
        """A Remote-shaped client of this daemon, bound to ``namespace`` (own RPC counters)."""
        return FakeRemote(self, namespace, default_deadline=default_deadline)

    def fail_next(self, method: str, exc: BaseException, *, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` (e.g. "Tasks.Start") raise ``exc``.

        The call is counted (and counted as failed) and changes nothing, like an RPC refused
        by the daemon. "Events.Subscribe" fails when the stream is opened.
        """
        queue = self._failures.setdefault(method, collections.deque())
        queue.extend([exc] * times)

    def break_event_streams(self, message: str = "connection to containerd lost") -> None:
        """End every open subscription with Unavailable (queued envelopes are lost)."""
        streams, self._streams = self._streams, []
        for stream in streams:
            stream._break(Unavailable(f"Events.Subscribe: {message}"))

    def hold_events(self) -> None:
        """Keep every event back (in order) until :meth:`release_events`."""
        self._holding = True

    def release_events(self) -> int:
        """Publish the events held back, in order; returns how many."""
        self._holding = False
        held, self._held = self._held, []
        for envelope in held:
            self.publish_envelope(envelope)
        return len(held)

    def drop_events(self, dropping: bool = True) -> None:
        """While True, everything published is lost (containerd is blind to its subscribers)."""
        self._dropping = dropping

    def publish(
        self, namespace: str, message: Message, *, topic: str | None = None
    ) -> events_pb2.Envelope:
        """Publish a ``containerd.events`` message as containerd would (e.g. a TaskOOM)."""
        name = message.DESCRIPTOR.full_name
        if topic is None:
            topic = _TOPICS.get(name)
            if topic is None:
                raise ValueError(f"no default topic for {name}; pass topic=")
        envelope = make_envelope(namespace, topic, name, message.SerializeToString())
        self.publish_envelope(envelope)
        return envelope

    def publish_envelope(self, envelope: events_pb2.Envelope) -> int:
        """Hand one envelope to every matching subscriber; returns how many got it.

        Subscribers share the envelope object: treat received envelopes as read-only.
        """
        if self._in_rpc is not None:
            self._in_rpc.append(envelope)
            return 0
        if self._holding:
            self._held.append(envelope)
            return 0
        self._published += 1
        if self._dropping:
            self._dropped += 1
            return 0
        delivered = 0
        namespace = envelope.namespace
        topic = envelope.topic
        for stream in self._streams:
            if stream.filter.match_event(namespace, topic) and stream._offer(envelope):
                delivered += 1
        self._delivered += delivered
        return delivered

    def exit_process(
        self, namespace: str, container_id: str, exec_id: str = "", *, code: int = 0
    ) -> None:
        """Make a running process exit on its own with ``code`` (as if it had finished)."""
        task = self._namespace(namespace).tasks.get(container_id)
        if task is None:
            raise NotFound(f"task {container_id} not found")
        proc = task.process(exec_id)
        if not proc.alive:
            raise FailedPrecondition(f"process {proc.process_id} is not running")
        self._exit(namespace, task, proc, code)

    def oom(self, namespace: str, container_id: str) -> None:
        """Publish a TaskOOM for ``container_id`` (the process keeps running)."""
        self.publish(namespace, task_events_pb2.TaskOOM(container_id=container_id))

    def statistics(self) -> FakeStatistics:
        return FakeStatistics(
            namespaces=len(self._namespaces),
            containers=sum(len(ns.containers) for ns in self._namespaces.values()),
            tasks=sum(len(ns.tasks) for ns in self._namespaces.values()),
            subscribers=len(self._streams),
            events_published=self._published,
            events_delivered=self._delivered,
            events_dropped=self._dropped,
            timers_pending=len(self._timers),
        )

    # -- plumbing used by FakeRemote -----------------------------------------------------

    def _namespace(self, name: str) -> _Namespace:
        ns = self._namespaces.get(name)
        if ns is None:
            ns = self._namespaces[name] = _Namespace(name)
        return ns

    def _scripted_failure(self, method: str) -> BaseException | None:
        queue = self._failures.get(method)
        if not queue:
            return None
        exc = queue.popleft()
        if not queue:
            del self._failures[method]
        return exc

    def _emit(self, namespace: str, topic: str, message: Message) -> None:
        if not self._streams and not self._dropping and self._in_rpc is None and not self._holding:
            self._published += 1
            return  # nobody listens: skip serializing
        name = message.DESCRIPTOR.full_name
        self.publish_envelope(make_envelope(namespace, topic, name, message.SerializeToString()))

    def _allocate_pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    # -- process simulation ---------------------------------------------------------------

    def _started(self, namespace: str, task: _Task, proc: _Proc) -> None:
        if proc.exit_code is None:
            return
        if proc.delay <= 0:
            self._exit(namespace, task, proc, proc.exit_code)
        elif math.isfinite(proc.delay):
            self._schedule(proc.delay, lambda: self._timer_exit(namespace, task, proc))

    def _timer_exit(self, namespace: str, task: _Task, proc: _Proc) -> None:
        if not proc.alive or proc.exit_code is None:
            return
        if proc.status == _STATUS_PAUSED or task.init.status == _STATUS_PAUSED:
            proc.pending_exit = proc.exit_code  # a frozen process finishes once thawed
            return
        self._exit(namespace, task, proc, proc.exit_code)

    def _exit(self, namespace: str, task: _Task, proc: _Proc, code: int) -> None:
        if proc.status == _STATUS_STOPPED:
            return
        if proc is task.init:
            # PID 1 of a pid namespace takes every other process of the container with it.
            for other in task.execs.values():
                if other.alive:
                    self._exit(namespace, task, other, 128 + signal_module.SIGKILL)
        now = time.time_ns()
        proc.status = _STATUS_STOPPED
        proc.exit_status = code
        proc.exited_at = (now // 1_000_000_000, now % 1_000_000_000)
        proc.pending_exit = None
        if proc.exit_event is not None:
            proc.exit_event.set()
        event = task_events_pb2.TaskExit(
            container_id=proc.container_id, id=proc.process_id, pid=proc.pid, exit_status=code
        )
        event.exited_at.seconds, event.exited_at.nanos = proc.exited_at
        self._emit(namespace, "/tasks/exit", event)

    def _signal(self, namespace: str, task: _Task, proc: _Proc, sig: int) -> None:
        if sig == signal_module.SIGKILL or not proc.ignore_signals:
            self._exit(namespace, task, proc, 128 + sig)

    def _schedule(self, delay: float, callback: Callable[[], None]) -> None:
        token = trio.lowlevel.current_trio_token()
        if token is not self._timer_token:
            # A new Trio run: timers of an earlier run died with it.
            self._timer_token = token
            self._timers.clear()
            self._timer_scope = None
            trio.lowlevel.spawn_system_task(self._run_timers, name="fake-containerd-timers")
        deadline = trio.current_time() + delay
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, callback))
        scope = self._timer_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def _run_timers(self) -> None:
        while True:
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, callback = heapq.heappop(self._timers)
                callback()
            with trio.CancelScope(
                deadline=self._timers[0][0] if self._timers else math.inf
            ) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None


_TOPICS: Final = {
    "containerd.events.TaskCreate": "/tasks/create",
    "containerd.events.TaskStart": "/tasks/start",
    "containerd.events.TaskExit": "/tasks/exit",
    "containerd.events.TaskDelete": "/tasks/delete",
    "containerd.events.TaskOOM": "/tasks/oom",
    "containerd.events.TaskExecAdded": "/tasks/exec-added",
    "containerd.events.TaskExecStarted": "/tasks/exec-started",
    "containerd.events.TaskPaused": "/tasks/paused",
    "containerd.events.TaskResumed": "/tasks/resumed",
    "containerd.events.TaskCheckpointed": "/tasks/checkpointed",
    "containerd.events.ContainerDelete": "/containers/delete",
}


def make_envelope(namespace: str, topic: str, type_url: str, value: bytes) -> events_pb2.Envelope:
    """An Envelope stamped now, with the bare type URL containerd 1.6 sends."""
    envelope = events_pb2.Envelope(namespace=namespace, topic=topic)
    now = time.time_ns()
    envelope.timestamp.seconds = now // 1_000_000_000
    envelope.timestamp.nanos = now % 1_000_000_000
    envelope.event.type_url = type_url
    envelope.event.value = value
    return envelope


# -- the Remote-shaped client -------------------------------------------------------------


class FakeRemote:
    """What :class:`actors.containerd._remote.Remote` is, over a :class:`FakeContainerd`."""

    def __init__(
        self, fake: FakeContainerd, namespace: str, *, default_deadline: float = DEFAULT_TIMEOUT
    ) -> None:
        self.fake = fake
        self.namespace = namespace
        self.default_deadline = default_deadline
        self._calls: collections.Counter[str] = collections.Counter()
        self._failures: collections.Counter[str] = collections.Counter()

    def statistics(self) -> RemoteStatistics:
        return RemoteStatistics(
            calls=dict(self._calls),
            failures=dict(self._failures),
            total=sum(self._calls.values()),
        )

    async def _unary(self, name: str, handler: Callable[..., _T], *args: Any) -> _T:
        self._calls[name] += 1
        if self.fake.rpc_latency > 0:
            await trio.sleep(self.fake.rpc_latency)
        else:
            await trio.lowlevel.checkpoint()
        try:
            scripted = self.fake._scripted_failure(name)
            if scripted is not None:
                raise scripted
            if not self.namespace:
                raise FailedPrecondition(f"{name}: namespace is required")
            if not self.fake.events_after_reply:
                return handler(*args)
            self.fake._in_rpc = []
            try:
                return handler(*args)
            finally:
                emitted, self.fake._in_rpc = self.fake._in_rpc, None
                if emitted:
                    trio.lowlevel.spawn_system_task(self._publish_after_reply, emitted)
        except Exception:
            self._failures[name] += 1
            raise

    async def _publish_after_reply(self, envelopes: list[events_pb2.Envelope]) -> None:
        # The caller was rescheduled with its reply before this task first runs.
        await trio.lowlevel.checkpoint()
        for envelope in envelopes:
            self.fake.publish_envelope(envelope)

    @property
    def _ns(self) -> _Namespace:
        return self.fake._namespace(self.namespace)

    def _task(self, container_id: str) -> _Task:
        ns = self._ns
        if container_id not in ns.containers:
            raise NotFound(f"container {container_id!r} in namespace {self.namespace!r}: not found")
        task = ns.tasks.get(container_id)
        if task is None:
            raise NotFound(f"task {container_id} not found")
        return task

    # -- Version / health ---------------------------------------------------------------

    async def version(self, *, deadline: float | None = None) -> version_pb2.VersionResponse:
        return await self._unary("Version.Version", self._version)

    def _version(self) -> version_pb2.VersionResponse:
        return version_pb2.VersionResponse(version=self.fake.version, revision="actors.testing")

    async def health_check(self, *, deadline: float | None = None) -> int:
        return await self._unary("Health.Check", self._health)

    def _health(self) -> int:
        return _SERVING if self.fake.serving else _NOT_SERVING

    # -- Containers ---------------------------------------------------------------------

    async def containers_create(
        self, container: containers_pb2.Container, *, deadline: float | None = None
    ) -> containers_pb2.Container:
        return await self._unary("Containers.Create", self._containers_create, container)

    def _containers_create(self, container: containers_pb2.Container) -> containers_pb2.Container:
        if not is_valid_id(container.id):
            raise InvalidArgument(f"container id {container.id!r}: invalid argument")
        if not container.runtime.name:
            raise InvalidArgument("container.Runtime.Name must be set: invalid argument")
        if not container.HasField("spec"):
            raise InvalidArgument("container.Spec must be set: invalid argument")
        ns = self._ns
        if container.id in ns.containers:
            raise AlreadyExists(f"container {container.id!r}: already exists")
        stored = containers_pb2.Container()
        stored.CopyFrom(container)
        now = time.time_ns()
        for stamp in (stored.created_at, stored.updated_at):
            stamp.seconds, stamp.nanos = now // 1_000_000_000, now % 1_000_000_000
        ns.containers[stored.id] = stored
        return _copy(stored)

    async def containers_get(
        self, container_id: str, *, deadline: float | None = None
    ) -> containers_pb2.Container:
        return await self._unary("Containers.Get", self._containers_get, container_id)

    def _containers_get(self, container_id: str) -> containers_pb2.Container:
        stored = self._ns.containers.get(container_id)
        if stored is None:
            raise NotFound(f"container {container_id!r} in namespace {self.namespace!r}: not found")
        return _copy(stored)

    async def containers_list(
        self, filters: list[str] | None = None, *, deadline: float | None = None
    ) -> list[containers_pb2.Container]:
        return await self._unary("Containers.List", self._containers_list, filters or [])

    def _containers_list(self, filters: list[str]) -> list[containers_pb2.Container]:
        selector = ContainerdFilter(filters)
        found = []
        for container_id in sorted(self._ns.containers):
            stored = self._ns.containers[container_id]
            if selector.match(functools.partial(_container_field, stored)):
                found.append(_copy(stored))
        return found

    async def containers_update(
        self,
        container: containers_pb2.Container,
        paths: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> containers_pb2.Container:
        return await self._unary(
            "Containers.Update", self._containers_update, container, list(paths)
        )

    def _containers_update(
        self, container: containers_pb2.Container, paths: list[str]
    ) -> containers_pb2.Container:
        stored = self._ns.containers.get(container.id)
        if stored is None:
            raise NotFound(f"container {container.id!r} in namespace {self.namespace!r}: not found")
        for path in paths:
            key = path.removeprefix("labels.")
            if key == path:
                raise InvalidArgument(f"cannot update {path!r} (the fake updates labels only)")
            # containerd removes a label whose new value is empty.
            value = container.labels.get(key, "")
            if value:
                stored.labels[key] = value
            else:
                stored.labels.pop(key, None)
        now = time.time_ns()
        stored.updated_at.seconds, stored.updated_at.nanos = now // 10**9, now % 10**9
        return _copy(stored)

    async def containers_delete(self, container_id: str, *, deadline: float | None = None) -> None:
        await self._unary("Containers.Delete", self._containers_delete, container_id)

    def _containers_delete(self, container_id: str) -> None:
        # The server does not look for a live task (only the Go client does): the task stays
        # behind, orphaned, exactly as it would on containerd.
        if self._ns.containers.pop(container_id, None) is None:
            raise NotFound(f"container {container_id!r} in namespace {self.namespace!r}: not found")
        self.fake._emit(
            self.namespace,
            "/containers/delete",
            container_events_pb2.ContainerDelete(id=container_id),
        )

    # -- Tasks --------------------------------------------------------------------------

    async def tasks_create(
        self,
        container_id: str,
        *,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        rootfs: Sequence[Mount] = (),
        checkpoint_path: str | None = None,
        runtime_options: bytes = b"",
        deadline: float | None = None,
    ) -> int:
        request = create_task_request(
            container_id,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
            rootfs=rootfs,
            checkpoint_path=checkpoint_path,
            runtime_options=runtime_options,
        )
        response = await self._unary("Tasks.Create", self._tasks_create, request)
        return int(response.pid)

    def _tasks_create(self, request: tasks_pb2.CreateTaskRequest) -> tasks_pb2.CreateTaskResponse:
        ns = self._ns
        container = ns.containers.get(request.container_id)
        if container is None:
            raise NotFound(
                f"container {request.container_id!r} in namespace {self.namespace!r}: not found"
            )
        if request.container_id in ns.tasks:
            raise AlreadyExists(f"task {request.container_id}: already exists")
        try:
            spec = _SPEC_DECODER.decode(container.spec.value).process
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidArgument(f"OCI runtime create failed: bad spec: {exc}") from None
        if spec is None or not spec.args:
            raise InvalidArgument("OCI runtime create failed: args must not be empty")
        if bool(request.terminal) != spec.terminal:
            raise FailedPrecondition(
                "OCI runtime create failed: terminal must match the spec's process.terminal"
            )
        init = _Proc(
            request.container_id,
            "",
            spec,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
            terminal=request.terminal,
        )
        init.pid = self.fake._allocate_pid()
        ns.tasks[request.container_id] = _Task(init)
        event = task_events_pb2.TaskCreate(
            container_id=request.container_id,
            bundle=f"/run/containerd/io.containerd.runtime.v2.task/{self.namespace}/"
            f"{request.container_id}",
            pid=init.pid,
            checkpoint=request.checkpoint.digest,
        )
        event.rootfs.extend(request.rootfs)
        event.io.stdin, event.io.stdout, event.io.stderr = (
            request.stdin,
            request.stdout,
            request.stderr,
        )
        event.io.terminal = request.terminal
        self.fake._emit(self.namespace, "/tasks/create", event)
        return tasks_pb2.CreateTaskResponse(container_id=request.container_id, pid=init.pid)

    async def tasks_start(
        self, container_id: str, exec_id: str = "", *, deadline: float | None = None
    ) -> int:
        return await self._unary("Tasks.Start", self._tasks_start, container_id, exec_id)

    def _tasks_start(self, container_id: str, exec_id: str) -> int:
        task = self._task(container_id)
        proc = task.process(exec_id)
        if proc.status != _STATUS_CREATED:
            raise FailedPrecondition(f"process {proc.process_id} was already started")
        if exec_id:
            if not task.init.alive:
                raise FailedPrecondition(f"cannot start exec {exec_id}: task is not running")
            proc.pid = self.fake._allocate_pid()
        else:
            task.started_at = trio.current_time()
        proc.status = _STATUS_RUNNING
        if exec_id:
            self.fake._emit(
                self.namespace,
                "/tasks/exec-started",
                task_events_pb2.TaskExecStarted(
                    container_id=container_id, exec_id=exec_id, pid=proc.pid
                ),
            )
        else:
            self.fake._emit(
                self.namespace,
                "/tasks/start",
                task_events_pb2.TaskStart(container_id=container_id, pid=proc.pid),
            )
        if proc.exit_on_eof and (proc.stdin_closed or not proc.stdin):
            self.fake._exit(self.namespace, task, proc, 0)
        else:
            self.fake._started(self.namespace, task, proc)
        return proc.pid

    async def tasks_delete(
        self, container_id: str, *, deadline: float | None = None
    ) -> tasks_pb2.DeleteResponse:
        return await self._unary("Tasks.Delete", self._tasks_delete, container_id)

    def _tasks_delete(self, container_id: str) -> tasks_pb2.DeleteResponse:
        task = self._task(container_id)
        init = task.init
        if init.status != _STATUS_STOPPED and not (init.status == _STATUS_CREATED and not init.pid):
            raise FailedPrecondition(
                f"task must be stopped before deletion: {_status_name(init.status)}: "
                "failed precondition"
            )
        del self._ns.tasks[container_id]
        response = tasks_pb2.DeleteResponse(
            id=container_id, pid=init.pid, exit_status=init.exit_status
        )
        response.exited_at.seconds, response.exited_at.nanos = init.exited_at
        event = task_events_pb2.TaskDelete(
            container_id=container_id, pid=init.pid, exit_status=init.exit_status, id=container_id
        )
        event.exited_at.CopyFrom(response.exited_at)
        self.fake._emit(self.namespace, "/tasks/delete", event)
        return response

    async def tasks_delete_process(
        self, container_id: str, exec_id: str, *, deadline: float | None = None
    ) -> tasks_pb2.DeleteResponse:
        return await self._unary(
            "Tasks.DeleteProcess", self._tasks_delete_process, container_id, exec_id
        )

    def _tasks_delete_process(self, container_id: str, exec_id: str) -> tasks_pb2.DeleteResponse:
        task = self._task(container_id)
        if not exec_id:
            raise InvalidArgument("exec id is required to delete a process")
        proc = task.process(exec_id)
        if proc.alive:
            raise FailedPrecondition(
                f"process {exec_id} must be stopped before deletion: "
                f"{_status_name(proc.status)}: failed precondition"
            )
        del task.execs[exec_id]
        response = tasks_pb2.DeleteResponse(id=exec_id, pid=proc.pid, exit_status=proc.exit_status)
        response.exited_at.seconds, response.exited_at.nanos = proc.exited_at
        return response

    async def tasks_get(
        self, container_id: str, exec_id: str = "", *, deadline: float | None = None
    ) -> task_pb2.Process:
        return await self._unary("Tasks.Get", self._tasks_get, container_id, exec_id)

    def _tasks_get(self, container_id: str, exec_id: str) -> task_pb2.Process:
        return self._task(container_id).process(exec_id).to_proto()

    async def tasks_list(self, *, deadline: float | None = None) -> list[task_pb2.Process]:
        return await self._unary("Tasks.List", self._tasks_list)

    def _tasks_list(self) -> list[task_pb2.Process]:
        # Like containerd 1.6: every task of the namespace, orphans included.
        return [task.init.to_proto() for task in self._ns.tasks.values()]

    async def tasks_kill(
        self,
        container_id: str,
        signal: int,
        *,
        exec_id: str = "",
        all: bool = False,
        deadline: float | None = None,
    ) -> None:
        await self._unary("Tasks.Kill", self._tasks_kill, container_id, signal, exec_id, all)

    def _tasks_kill(self, container_id: str, sig: int, exec_id: str, all_: bool) -> None:
        task = self._task(container_id)
        proc = task.process(exec_id)
        if not 0 < sig <= 64:
            raise InvalidArgument(f"invalid signal {sig}")
        if all_ and not exec_id:
            victims = [p for p in (*task.execs.values(), task.init) if p.status != _STATUS_STOPPED]
            if not victims:
                raise NotFound("process already finished: not found")
            for victim in victims:
                self.fake._signal(self.namespace, task, victim, sig)
            return
        if proc.status == _STATUS_STOPPED:
            raise NotFound("process already finished: not found")
        if proc.exec_id and proc.status == _STATUS_CREATED:
            raise FailedPrecondition(f"process {exec_id} not started: failed precondition")
        self.fake._signal(self.namespace, task, proc, sig)

    async def tasks_exec(
        self,
        container_id: str,
        exec_id: str,
        *,
        spec: bytes,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        deadline: float | None = None,
    ) -> None:
        request = exec_process_request(
            container_id,
            exec_id,
            spec=spec,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
        )
        await self._unary("Tasks.Exec", self._tasks_exec, request)

    def _tasks_exec(self, request: tasks_pb2.ExecProcessRequest) -> None:
        task = self._task(request.container_id)
        if not is_valid_id(request.exec_id):
            raise InvalidArgument(f"invalid exec id {request.exec_id!r}")
        if request.exec_id in task.execs:
            raise AlreadyExists(f"id {request.exec_id}: already exists")
        if not task.init.alive:
            raise FailedPrecondition(f"container {request.container_id} is not running")
        try:
            spec = _PROCESS_DECODER.decode(request.spec.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidArgument(f"bad process spec: {exc}") from None
        if not spec.args:
            raise InvalidArgument("process args must not be empty")
        task.execs[request.exec_id] = _Proc(
            request.container_id,
            request.exec_id,
            spec,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
            terminal=request.terminal,
        )
        self.fake._emit(
            self.namespace,
            "/tasks/exec-added",
            task_events_pb2.TaskExecAdded(
                container_id=request.container_id, exec_id=request.exec_id
            ),
        )

    async def tasks_resize_pty(
        self,
        container_id: str,
        width: int,
        height: int,
        *,
        exec_id: str = "",
        deadline: float | None = None,
    ) -> None:
        await self._unary("Tasks.ResizePty", self._tasks_resize, container_id, exec_id)

    def _tasks_resize(self, container_id: str, exec_id: str) -> None:
        proc = self._task(container_id).process(exec_id)
        if not proc.terminal:
            raise FailedPrecondition(f"process {proc.process_id} has no console")
        if proc.status == _STATUS_STOPPED:
            raise NotFound("process already finished: not found")

    async def tasks_close_io(
        self, container_id: str, *, exec_id: str = "", deadline: float | None = None
    ) -> None:
        await self._unary("Tasks.CloseIO", self._tasks_close_io, container_id, exec_id)

    def _tasks_close_io(self, container_id: str, exec_id: str) -> None:
        task = self._task(container_id)
        proc = task.process(exec_id)
        proc.stdin_closed = True
        if proc.exit_on_eof and proc.alive:
            self.fake._exit(self.namespace, task, proc, 0)

    async def tasks_pause(self, container_id: str, *, deadline: float | None = None) -> None:
        await self._unary("Tasks.Pause", self._tasks_pause, container_id)

    def _tasks_pause(self, container_id: str) -> None:
        task = self._task(container_id)
        if task.init.status != _STATUS_RUNNING:
            raise FailedPrecondition(
                f"cannot pause a {_status_name(task.init.status)} task: failed precondition"
            )
        task.init.status = _STATUS_PAUSED
        self.fake._emit(
            self.namespace, "/tasks/paused", task_events_pb2.TaskPaused(container_id=container_id)
        )

    async def tasks_resume(self, container_id: str, *, deadline: float | None = None) -> None:
        await self._unary("Tasks.Resume", self._tasks_resume, container_id)

    def _tasks_resume(self, container_id: str) -> None:
        task = self._task(container_id)
        if task.init.status != _STATUS_PAUSED:
            raise FailedPrecondition(
                f"cannot resume a {_status_name(task.init.status)} task: failed precondition"
            )
        task.init.status = _STATUS_RUNNING
        self.fake._emit(
            self.namespace,
            "/tasks/resumed",
            task_events_pb2.TaskResumed(container_id=container_id),
        )
        for proc in (task.init, *task.execs.values()):
            if proc.pending_exit is not None and proc.alive:
                self.fake._exit(self.namespace, task, proc, proc.pending_exit)

    async def tasks_list_pids(
        self, container_id: str, *, deadline: float | None = None
    ) -> list[task_pb2.ProcessInfo]:
        return await self._unary("Tasks.ListPids", self._tasks_list_pids, container_id)

    def _tasks_list_pids(self, container_id: str) -> list[task_pb2.ProcessInfo]:
        task = self._task(container_id)
        if not task.init.alive:
            raise FailedPrecondition(f"container {container_id} is not running")
        infos = [task_pb2.ProcessInfo(pid=task.init.pid)]
        for proc in task.execs.values():
            if proc.alive:
                details = oci_pb2.ProcessDetails(exec_id=proc.exec_id).SerializeToString()
                info = task_pb2.ProcessInfo(pid=proc.pid)
                info.info.type_url = "containerd.runc.v1.ProcessDetails"
                info.info.value = details
                infos.append(info)
        return infos

    async def tasks_checkpoint(
        self,
        container_id: str,
        *,
        image_path: str,
        exit: bool = False,
        deadline: float | None = None,
    ) -> tasks_pb2.CheckpointTaskResponse:
        request = checkpoint_task_request(container_id, image_path=image_path, exit=exit)
        return await self._unary("Tasks.Checkpoint", self._tasks_checkpoint, request)

    def _tasks_checkpoint(
        self, request: tasks_pb2.CheckpointTaskRequest
    ) -> tasks_pb2.CheckpointTaskResponse:
        task = self._task(request.container_id)
        if not task.init.alive:
            raise FailedPrecondition(f"container {request.container_id} is not running")
        options = oci_pb2.CheckpointOptions()
        if request.options.value:
            options.ParseFromString(request.options.value)
        task.checkpoints += 1
        self.fake._emit(
            self.namespace,
            "/tasks/checkpointed",
            task_events_pb2.TaskCheckpointed(
                container_id=request.container_id, checkpoint=options.image_path
            ),
        )
        if options.exit:
            self.fake._exit(self.namespace, task, task.init, 128 + signal_module.SIGKILL)
        return tasks_pb2.CheckpointTaskResponse()

    async def tasks_update(
        self, container_id: str, resources: bytes, *, deadline: float | None = None
    ) -> None:
        await self._unary(
            "Tasks.Update", self._tasks_update, update_task_request(container_id, resources)
        )

    def _tasks_update(self, request: tasks_pb2.UpdateTaskRequest) -> None:
        task = self._task(request.container_id)
        if not task.init.alive:
            raise FailedPrecondition(f"container {request.container_id} is not running")
        task.resources = bytes(request.resources.value)

    async def tasks_metrics(
        self, filters: list[str], *, deadline: float | None = None
    ) -> list[metrics_pb2.Metric]:
        return await self._unary("Tasks.Metrics", self._tasks_metrics, filters)

    def _tasks_metrics(self, filters: list[str]) -> list[metrics_pb2.Metric]:
        selector = ContainerdFilter(filters)
        now_ns = time.time_ns()
        now = trio.current_time()
        metrics = []
        for container_id, task in self._ns.tasks.items():
            if task.init.status == _STATUS_STOPPED:
                continue  # its cgroup is gone
            if not selector.match(functools.partial(_id_field, container_id)):
                continue
            live = 1 + sum(1 for p in task.execs.values() if p.alive)
            sample = cgroups_v2_pb2.Metrics()
            sample.pids.current = live
            sample.cpu.usage_usec = int(max(0.0, now - task.started_at) * 1000)
            sample.memory.usage = 512 * 1024 * live
            sample.memory.anon = 256 * 1024 * live
            metric = metrics_pb2.Metric(id=container_id)
            metric.timestamp.seconds, metric.timestamp.nanos = (
                now_ns // 1_000_000_000,
                now_ns % 1_000_000_000,
            )
            metric.data.CopyFrom(
                AnyPb(type_url="io.containerd.cgroups.v2.Metrics", value=sample.SerializeToString())
            )
            metrics.append(metric)
        return metrics

    async def tasks_wait(
        self, container_id: str, exec_id: str = "", *, deadline: float | None = None
    ) -> tasks_pb2.WaitResponse:
        name = "Tasks.Wait"
        proc = await self._unary(name, self._wait_target, container_id, exec_id)
        if proc.status != _STATUS_STOPPED:
            if proc.exit_event is None:
                proc.exit_event = trio.Event()
            limit = self.default_deadline if deadline is None else deadline
            with trio.move_on_after(limit) as scope:
                await proc.exit_event.wait()
            if scope.cancelled_caught:
                self._failures[name] += 1
                raise DeadlineExceeded(f"{name}: deadline exceeded")
        response = tasks_pb2.WaitResponse(exit_status=proc.exit_status)
        response.exited_at.seconds, response.exited_at.nanos = proc.exited_at
        return response

    def _wait_target(self, container_id: str, exec_id: str) -> _Proc:
        return self._task(container_id).process(exec_id)

    # -- Events -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def events_subscribe(self, filters: list[str]) -> AsyncIterator[FakeEventStream]:
        """Open a subscription; the stream raises our errors, like the real one."""
        name = "Events.Subscribe"
        self._calls[name] += 1
        await trio.lowlevel.checkpoint()
        scripted = self.fake._scripted_failure(name)
        if scripted is not None:
            self._failures[name] += 1
            raise scripted
        try:
            event_filter = ContainerdFilter(filters)
        except InvalidArgument:
            self._failures[name] += 1
            raise
        stream = FakeEventStream(self, event_filter)
        self.fake._streams.append(stream)
        try:
            yield stream
        finally:
            stream._close()
            if stream in self.fake._streams:
                self.fake._streams.remove(stream)

    async def events_publish(
        self, topic: str, type_url: str, value: bytes, *, deadline: float | None = None
    ) -> None:
        await self._unary("Events.Publish", self._events_publish, topic, type_url, value)

    def _events_publish(self, topic: str, type_url: str, value: bytes) -> None:
        if not topic.startswith("/") or not all(is_valid_id(part) for part in topic[1:].split("/")):
            raise InvalidArgument(f"invalid topic {topic!r}")
        self.fake.publish_envelope(make_envelope(self.namespace, topic, type_url, value))

    # -- generic calls: the fake has no image store (content, snapshots...) --------------------

    def _no_image_store(self, name: str) -> Unimplemented:
        self._calls[name] += 1
        self._failures[name] += 1
        return Unimplemented(f"{name}: the in-memory fake has no image store")

    @property
    def channel(self) -> Channel:
        """No gRPC channel: the image services (actors.images) cannot run over the fake."""
        raise Unimplemented("the in-memory fake has no gRPC channel (and no image store)")

    async def call(
        self,
        name: str,
        method: Any,
        request: object,
        *,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        await trio.lowlevel.checkpoint()
        raise self._no_image_store(name)

    @contextlib.asynccontextmanager
    async def open_server_stream(
        self,
        name: str,
        method: Any,
        request: object,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[ResponseStream[Any]]:
        await trio.lowlevel.checkpoint()
        raise self._no_image_store(name)
        yield  # type: ignore[unreachable]  # pragma: no cover

    @contextlib.asynccontextmanager
    async def open_duplex(
        self,
        name: str,
        method: Any,
        *,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Duplex[Any, Any]]:
        await trio.lowlevel.checkpoint()
        raise self._no_image_store(name)
        yield  # type: ignore[unreachable]  # pragma: no cover


if TYPE_CHECKING:

    def _fake_is_a_containerd_remote(fake: FakeRemote) -> ContainerdRemote:
        return fake  # mypy checks here that the fake has the real remote's typed surface


def _copy(container: containers_pb2.Container) -> containers_pb2.Container:
    copied = containers_pb2.Container()
    copied.CopyFrom(container)
    return copied


def _container_field(container: containers_pb2.Container, field: str) -> str | None:
    if field == "id":
        return str(container.id)
    if field == "image":
        return str(container.image)
    if field == "runtime.name":
        return str(container.runtime.name)
    if field.startswith("labels."):
        key = field[len("labels.") :]
        return container.labels.get(key)
    return None


def _id_field(container_id: str, field: str) -> str | None:
    return container_id if field == "id" else None


def _status_name(status: int) -> str:
    return str(task_pb2.Status.Name(status)).lower()  # type: ignore[arg-type]


def envelopes_for(
    namespace: str, messages: Iterable[Message], *, topic: str | None = None
) -> list[events_pb2.Envelope]:
    """Pre-built envelopes (encoding is containerd's cost, not a subscriber's)."""
    built = []
    for message in messages:
        name = message.DESCRIPTOR.full_name
        built.append(
            make_envelope(namespace, topic or _TOPICS[name], name, message.SerializeToString())
        )
    return built


@contextlib.asynccontextmanager
async def open_fake_client(
    fake: FakeContainerd,
    namespace: str = "default",
    backend: Backend | None = None,
    *,
    state_dir: str | os.PathLike[str],
    restore: bool = True,
    restart_policy: RestartPolicy | None = None,
    shim_groups: ShimGroups | None = None,
    backend_grace: float = DEFAULT_DELIVERY_GRACE,
    backend_limit: int = DEFAULT_DELIVERY_LIMIT,
) -> AsyncIterator[Client]:
    """A :class:`Client` over ``fake`` (what :func:`actors.open_client` is over containerd).

    ``state_dir`` is where the actors create their FIFOs; nothing ever writes to them.
    """
    validate_id(namespace, kind="namespace")
    async with run_client(
        fake.remote(namespace),
        backend=backend,
        state_dir=os.fspath(state_dir),
        restore=restore,
        restart_policy=restart_policy or RestartPolicy(),
        shim_groups=shim_groups,
        backend_grace=backend_grace,
        backend_limit=backend_limit,
    ) as client:
        yield client
