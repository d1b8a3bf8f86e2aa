"""Typed containerd calls: namespace header, deadlines, error mapping and RPC counters.

Everything that talks to containerd goes through :class:`Remote`. Each method is exactly one
RPC and bumps the counter named ``Service.Method``, so tests can assert the RPC budget of every
operation from :meth:`Remote.statistics`. grpclib runs in the bridge's asyncio thread; the
Trio side only ever sees our own exceptions (``actors.errors``).

Methods take plain values (ids, FIFO paths, mounts, encoded specs) and build the protobuf
request here, with the ``*_request`` functions below (the testing fake builds its requests
with the same functions). The core sees the remote through the
:class:`~actors.containerd._interface.ContainerdRemote` protocol, which the fake satisfies
too.
"""

from __future__ import annotations

import collections
import contextlib
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec
import trio
from google.protobuf.any_pb2 import Any as AnyPb
from grpclib.client import Channel

from actors.containerd.pb.containerd.runc.options import oci_pb2
from actors.containerd.pb.containerd.services.containers.v1 import containers_grpc, containers_pb2
from actors.containerd.pb.containerd.services.events.v1 import events_grpc, events_pb2
from actors.containerd.pb.containerd.services.tasks.v1 import tasks_grpc, tasks_pb2
from actors.containerd.pb.containerd.services.version.v1 import version_grpc, version_pb2
from actors.containerd.pb.containerd.types import metrics_pb2
from actors.containerd.pb.containerd.types.task import task_pb2
from actors.containerd.pb.grpc.health.v1 import health_grpc, health_pb2

from ..errors import ClientClosed, from_grpc_exception
from ._channel import ContainerdChannel
from ._mounts import Mount, mounts_to_proto
from ._paths import DEFAULT_ADDRESS as DEFAULT_ADDRESS
from ._streams import Duplex, RequestSlot, ResponseStream, duplex_messages
from ._typeurls import (
    PROCESS_TYPE_URL,
    RESOURCES_TYPE_URL,
    RUNC_CHECKPOINT_OPTIONS_TYPE_URL,
    RUNC_OPTIONS_TYPE_URL,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from google.protobuf.empty_pb2 import Empty

    from ._bridge import AsyncioBridge, BridgedStream

_Resp = TypeVar("_Resp")

NAMESPACE_HEADER: Final = "containerd-namespace"
DEFAULT_TIMEOUT: Final = 30.0


class RemoteStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """RPC counters since the client opened.

    Attributes:
        calls: RPCs started, per ``Service.Method``.
        failures: RPCs that ended in an error, per ``Service.Method``.
        total: sum of ``calls``.
    """

    calls: dict[str, int]
    failures: dict[str, int]
    total: int


def parse_address(address: str) -> tuple[str | None, str | None, int | None]:
    """Split an address into (unix path, host, port); 'unix://' or a bare path is a socket."""
    if address.startswith("unix://"):
        return address[len("unix://") :], None, None
    if address.startswith("/") or address.startswith("."):
        return address, None, None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"containerd address {address!r} is neither a socket path nor host:port")
    return None, host or "127.0.0.1", int(port)


async def _make_channel(path: str | None, host: str | None, port: int | None) -> Channel:
    # grpclib binds the channel to the running loop, so it must be built inside the bridge.
    if path is not None:
        return ContainerdChannel(path=path)
    return ContainerdChannel(host=host, port=port)


async def _call_unary(
    method: Callable[..., Awaitable[_Resp]],
    request: object,
    deadline: float,
    metadata: Mapping[str, str],
) -> _Resp:
    return await method(request, timeout=deadline, metadata=metadata)


async def _stream_messages(
    # Any: a grpclib stub method of any service, and the messages it streams.
    method: Any,
    request: object,
    metadata: Mapping[str, str],
) -> AsyncIterator[Any]:
    # Runs in the asyncio thread; one task enters and leaves grpclib's stream context.
    async with method.open(metadata=metadata) as stream:
        await stream.send_message(request, end=True)
        while True:
            message = await stream.recv_message()
            if message is None:
                return
            yield message


# -- requests (shared with the testing fake, so both send containerd the same messages) ----


def create_task_request(
    container_id: str,
    *,
    stdin: str = "",
    stdout: str = "",
    stderr: str = "",
    terminal: bool = False,
    rootfs: Sequence[Mount] = (),
    checkpoint_path: str | None = None,
    runtime_options: bytes = b"",
) -> tasks_pb2.CreateTaskRequest:
    """Tasks.Create; with ``checkpoint_path`` the container's runc options (``runtime_options``,
    encoded ``containerd.runc.v1.Options``) are re-sent with ``criu_image_path`` set."""
    request = tasks_pb2.CreateTaskRequest(
        container_id=container_id, stdin=stdin, stdout=stdout, stderr=stderr, terminal=terminal
    )
    request.rootfs.extend(mounts_to_proto(rootfs))
    if checkpoint_path is not None:
        options = oci_pb2.Options()
        if runtime_options:
            options.ParseFromString(runtime_options)
        options.criu_image_path = checkpoint_path
        request.options.CopyFrom(
            AnyPb(type_url=RUNC_OPTIONS_TYPE_URL, value=options.SerializeToString())
        )
    return request


def exec_process_request(
    container_id: str,
    exec_id: str,
    *,
    spec: bytes,
    stdin: str = "",
    stdout: str = "",
    stderr: str = "",
    terminal: bool = False,
) -> tasks_pb2.ExecProcessRequest:
    """Tasks.Exec of ``spec``, an OCI process encoded as JSON (``PROCESS_TYPE_URL``)."""
    request = tasks_pb2.ExecProcessRequest(
        container_id=container_id,
        exec_id=exec_id,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        terminal=terminal,
    )
    request.spec.CopyFrom(AnyPb(type_url=PROCESS_TYPE_URL, value=spec))
    return request


def update_task_request(container_id: str, resources: bytes) -> tasks_pb2.UpdateTaskRequest:
    """Tasks.Update with OCI ``LinuxResources`` encoded as JSON (``RESOURCES_TYPE_URL``)."""
    request = tasks_pb2.UpdateTaskRequest(container_id=container_id)
    request.resources.CopyFrom(AnyPb(type_url=RESOURCES_TYPE_URL, value=resources))
    return request


def checkpoint_task_request(
    container_id: str, *, image_path: str, exit: bool = False
) -> tasks_pb2.CheckpointTaskRequest:
    """Tasks.Checkpoint into ``image_path`` (runc's CheckpointOptions), stopping it if ``exit``."""
    options = oci_pb2.CheckpointOptions(exit=exit, image_path=image_path)
    request = tasks_pb2.CheckpointTaskRequest(container_id=container_id)
    request.options.CopyFrom(
        AnyPb(type_url=RUNC_CHECKPOINT_OPTIONS_TYPE_URL, value=options.SerializeToString())
    )
    return request


class EventStream:
    """Envelopes from Events.Subscribe, one at a time, with errors mapped to ours."""

    def __init__(
        self,
        stream: BridgedStream[events_pb2.Envelope],
        failures: collections.Counter[str],
    ) -> None:
        self._stream = stream
        self._failures = failures

    async def receive(self) -> events_pb2.Envelope:
        """Return the next envelope; raise trio.EndOfChannel when containerd ends the stream."""
        try:
            return await self._stream.receive()
        except trio.EndOfChannel:
            raise
        except trio.ClosedResourceError as exc:
            raise ClientClosed("Events.Subscribe: the client is closed") from exc
        except Exception as exc:
            mapped = from_grpc_exception(exc, method="Events.Subscribe")
            if mapped is None:
                raise
            self._failures["Events.Subscribe"] += 1
            raise mapped from exc


class Remote:
    """One grpclib channel to one containerd namespace, seen from Trio."""

    def __init__(
        self,
        bridge: AsyncioBridge,
        channel: Channel,
        namespace: str,
        *,
        default_deadline: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._bridge = bridge
        self._channel = channel
        self.namespace = namespace
        self.default_deadline = default_deadline
        self._metadata: Mapping[str, str] = {NAMESPACE_HEADER: namespace}
        self._calls: collections.Counter[str] = collections.Counter()
        self._failures: collections.Counter[str] = collections.Counter()
        self._containers = containers_grpc.ContainersStub(channel)
        self._tasks = tasks_grpc.TasksStub(channel)
        self._events = events_grpc.EventsStub(channel)
        self._version = version_grpc.VersionStub(channel)
        self._health = health_grpc.HealthStub(channel)

    @classmethod
    async def connect(
        cls,
        bridge: AsyncioBridge,
        address: str,
        namespace: str,
        *,
        default_deadline: float = DEFAULT_TIMEOUT,
    ) -> Remote:
        """Build the channel inside the bridge (no I/O yet: grpclib connects lazily)."""
        path, host, port = parse_address(address)
        channel = await bridge.run(_make_channel, path, host, port)

        async def close_channel() -> None:
            channel.close()

        bridge.add_shutdown_callback(close_channel)
        return cls(bridge, channel, namespace, default_deadline=default_deadline)

    @property
    def channel(self) -> Channel:
        """The grpclib channel, for building stubs of further services (see :meth:`call`)."""
        return self._channel

    def statistics(self) -> RemoteStatistics:
        return RemoteStatistics(
            calls=dict(self._calls),
            failures=dict(self._failures),
            total=sum(self._calls.values()),
        )

    def _with_headers(self, headers: Mapping[str, str] | None) -> Mapping[str, str]:
        return self._metadata if not headers else {**headers, **self._metadata}

    async def _unary(
        self,
        name: str,
        # Any: a grpclib stub method; each caller annotates the response it gets.
        method: Any,
        request: object,
        deadline: float | None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        self._calls[name] += 1
        try:
            return await self._bridge.run(
                _call_unary,
                method,
                request,
                self.default_deadline if deadline is None else deadline,
                self._with_headers(headers),
            )
        except trio.ClosedResourceError as exc:
            self._failures[name] += 1
            raise ClientClosed(f"{name}: the client is closed") from exc
        except Exception as exc:
            self._failures[name] += 1
            mapped = from_grpc_exception(exc, method=name)
            if mapped is None:
                raise
            raise mapped from exc

    # -- Generic calls (for services typed elsewhere, e.g. actors.images) --------------------

    async def call(
        self,
        name: str,
        method: Any,
        request: object,
        *,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One unary RPC on a stub method of :attr:`channel`, counted as ``name``.

        ``Any``: ``method`` is a stub method of any service, so the response type is its; the
        typed wrappers in :mod:`actors.images._content` annotate each call's response.

        ``headers`` are extra gRPC metadata (e.g. ``containerd-lease``); the namespace header
        is always ours.
        """
        return await self._unary(name, method, request, deadline, headers)

    @contextlib.asynccontextmanager
    async def open_server_stream(
        self,
        name: str,
        method: Any,
        request: object,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[ResponseStream[Any]]:
        """A server-streaming RPC (one counted call); responses come from the yielded stream.

        ``Any``: as for :meth:`call`, the message types are the stub method's.
        """
        self._calls[name] += 1
        try:
            async with self._bridge.open_stream(
                _stream_messages, method, request, self._with_headers(headers)
            ) as stream:
                yield ResponseStream(stream, name, self._failures)
        except trio.ClosedResourceError as exc:
            self._failures[name] += 1
            raise ClientClosed(f"{name}: the client is closed") from exc

    @contextlib.asynccontextmanager
    async def open_duplex(
        self,
        name: str,
        method: Any,
        *,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Duplex[Any, Any]]:
        """A lock-step bidirectional RPC (one counted call); see :class:`._streams.Duplex`.

        ``deadline`` bounds the whole stream (none by default: a long upload is bounded by the
        caller's Trio cancel scope instead). ``Any``: as for :meth:`call`.
        """
        self._calls[name] += 1
        slot = RequestSlot()
        try:
            async with self._bridge.open_stream(
                duplex_messages, method, slot, self._with_headers(headers), deadline
            ) as stream:
                yield Duplex(stream, slot, name, self._failures)
        except trio.ClosedResourceError as exc:
            self._failures[name] += 1
            raise ClientClosed(f"{name}: the client is closed") from exc

    # -- Version / health ---------------------------------------------------------------

    async def version(self, *, deadline: float | None = None) -> version_pb2.VersionResponse:
        from google.protobuf.empty_pb2 import Empty

        request: Empty = Empty()
        response: version_pb2.VersionResponse = await self._unary(
            "Version.Version", self._version.Version, request, deadline
        )
        return response

    async def health_check(self, *, deadline: float | None = None) -> int:
        """Return grpc.health.v1 ServingStatus (1 means SERVING)."""
        response: health_pb2.HealthCheckResponse = await self._unary(
            "Health.Check", self._health.Check, health_pb2.HealthCheckRequest(), deadline
        )
        return int(response.status)

    # -- Containers ---------------------------------------------------------------------

    async def containers_create(
        self, container: containers_pb2.Container, *, deadline: float | None = None
    ) -> containers_pb2.Container:
        response: containers_pb2.CreateContainerResponse = await self._unary(
            "Containers.Create",
            self._containers.Create,
            containers_pb2.CreateContainerRequest(container=container),
            deadline,
        )
        return response.container

    async def containers_get(
        self, container_id: str, *, deadline: float | None = None
    ) -> containers_pb2.Container:
        response: containers_pb2.GetContainerResponse = await self._unary(
            "Containers.Get",
            self._containers.Get,
            containers_pb2.GetContainerRequest(id=container_id),
            deadline,
        )
        return response.container

    async def containers_list(
        self, filters: list[str] | None = None, *, deadline: float | None = None
    ) -> list[containers_pb2.Container]:
        response: containers_pb2.ListContainersResponse = await self._unary(
            "Containers.List",
            self._containers.List,
            containers_pb2.ListContainersRequest(filters=filters or []),
            deadline,
        )
        return list(response.containers)

    async def containers_update(
        self,
        container: containers_pb2.Container,
        paths: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> containers_pb2.Container:
        """Containers.Update of the fields in ``paths`` (e.g. ``labels.KEY``; an empty
        label value removes the label)."""
        request = containers_pb2.UpdateContainerRequest(container=container)
        request.update_mask.paths.extend(paths)
        response: containers_pb2.UpdateContainerResponse = await self._unary(
            "Containers.Update", self._containers.Update, request, deadline
        )
        return response.container

    async def containers_delete(self, container_id: str, *, deadline: float | None = None) -> None:
        await self._unary(
            "Containers.Delete",
            self._containers.Delete,
            containers_pb2.DeleteContainerRequest(id=container_id),
            deadline,
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
        """Create the task (see :func:`create_task_request`); returns the init pid."""
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
        response: tasks_pb2.CreateTaskResponse = await self._unary(
            "Tasks.Create", self._tasks.Create, request, deadline
        )
        return int(response.pid)

    async def tasks_start(
        self, container_id: str, exec_id: str = "", *, deadline: float | None = None
    ) -> int:
        response: tasks_pb2.StartResponse = await self._unary(
            "Tasks.Start",
            self._tasks.Start,
            tasks_pb2.StartRequest(container_id=container_id, exec_id=exec_id),
            deadline,
        )
        return int(response.pid)

    async def tasks_delete(
        self, container_id: str, *, deadline: float | None = None
    ) -> tasks_pb2.DeleteResponse:
        response: tasks_pb2.DeleteResponse = await self._unary(
            "Tasks.Delete",
            self._tasks.Delete,
            tasks_pb2.DeleteTaskRequest(container_id=container_id),
            deadline,
        )
        return response

    async def tasks_delete_process(
        self, container_id: str, exec_id: str, *, deadline: float | None = None
    ) -> tasks_pb2.DeleteResponse:
        response: tasks_pb2.DeleteResponse = await self._unary(
            "Tasks.DeleteProcess",
            self._tasks.DeleteProcess,
            tasks_pb2.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
            deadline,
        )
        return response

    async def tasks_get(
        self, container_id: str, exec_id: str = "", *, deadline: float | None = None
    ) -> task_pb2.Process:
        response: tasks_pb2.GetResponse = await self._unary(
            "Tasks.Get",
            self._tasks.Get,
            tasks_pb2.GetRequest(container_id=container_id, exec_id=exec_id),
            deadline,
        )
        return response.process

    async def tasks_list(self, *, deadline: float | None = None) -> list[task_pb2.Process]:
        response: tasks_pb2.ListTasksResponse = await self._unary(
            "Tasks.List", self._tasks.List, tasks_pb2.ListTasksRequest(), deadline
        )
        return list(response.tasks)

    async def tasks_kill(
        self,
        container_id: str,
        signal: int,
        *,
        exec_id: str = "",
        all: bool = False,
        deadline: float | None = None,
    ) -> None:
        await self._unary(
            "Tasks.Kill",
            self._tasks.Kill,
            tasks_pb2.KillRequest(
                container_id=container_id, exec_id=exec_id, signal=signal, all=all
            ),
            deadline,
        )

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
        """Add a process to the task (see :func:`exec_process_request`); Start starts it."""
        request = exec_process_request(
            container_id,
            exec_id,
            spec=spec,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
        )
        await self._unary("Tasks.Exec", self._tasks.Exec, request, deadline)

    async def tasks_resize_pty(
        self,
        container_id: str,
        width: int,
        height: int,
        *,
        exec_id: str = "",
        deadline: float | None = None,
    ) -> None:
        await self._unary(
            "Tasks.ResizePty",
            self._tasks.ResizePty,
            tasks_pb2.ResizePtyRequest(
                container_id=container_id, exec_id=exec_id, width=width, height=height
            ),
            deadline,
        )

    async def tasks_close_io(
        self, container_id: str, *, exec_id: str = "", deadline: float | None = None
    ) -> None:
        await self._unary(
            "Tasks.CloseIO",
            self._tasks.CloseIO,
            tasks_pb2.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=True),
            deadline,
        )

    async def tasks_pause(self, container_id: str, *, deadline: float | None = None) -> None:
        await self._unary(
            "Tasks.Pause",
            self._tasks.Pause,
            tasks_pb2.PauseTaskRequest(container_id=container_id),
            deadline,
        )

    async def tasks_resume(self, container_id: str, *, deadline: float | None = None) -> None:
        await self._unary(
            "Tasks.Resume",
            self._tasks.Resume,
            tasks_pb2.ResumeTaskRequest(container_id=container_id),
            deadline,
        )

    async def tasks_list_pids(
        self, container_id: str, *, deadline: float | None = None
    ) -> list[task_pb2.ProcessInfo]:
        response: tasks_pb2.ListPidsResponse = await self._unary(
            "Tasks.ListPids",
            self._tasks.ListPids,
            tasks_pb2.ListPidsRequest(container_id=container_id),
            deadline,
        )
        return list(response.processes)

    async def tasks_checkpoint(
        self,
        container_id: str,
        *,
        image_path: str,
        exit: bool = False,
        deadline: float | None = None,
    ) -> tasks_pb2.CheckpointTaskResponse:
        request = checkpoint_task_request(container_id, image_path=image_path, exit=exit)
        response: tasks_pb2.CheckpointTaskResponse = await self._unary(
            "Tasks.Checkpoint", self._tasks.Checkpoint, request, deadline
        )
        return response

    async def tasks_update(
        self, container_id: str, resources: bytes, *, deadline: float | None = None
    ) -> None:
        """Change the task's cgroup limits (``resources``: encoded OCI LinuxResources)."""
        request = update_task_request(container_id, resources)
        await self._unary("Tasks.Update", self._tasks.Update, request, deadline)

    async def tasks_metrics(
        self, filters: list[str], *, deadline: float | None = None
    ) -> list[metrics_pb2.Metric]:
        response: tasks_pb2.MetricsResponse = await self._unary(
            "Tasks.Metrics",
            self._tasks.Metrics,
            tasks_pb2.MetricsRequest(filters=filters),
            deadline,
        )
        return list(response.metrics)

    async def tasks_wait(
        self, container_id: str, exec_id: str = "", *, deadline: float | None = None
    ) -> tasks_pb2.WaitResponse:
        response: tasks_pb2.WaitResponse = await self._unary(
            "Tasks.Wait",
            self._tasks.Wait,
            tasks_pb2.WaitRequest(container_id=container_id, exec_id=exec_id),
            deadline,
        )
        return response

    # -- Events -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def events_subscribe(self, filters: list[str]) -> AsyncIterator[EventStream]:
        """Open Events.Subscribe; the stream raises our errors, never grpclib's."""
        name = "Events.Subscribe"
        self._calls[name] += 1
        request = events_pb2.SubscribeRequest(filters=filters)
        try:
            async with self._bridge.open_stream(
                _stream_messages, self._events.Subscribe, request, self._metadata
            ) as stream:
                yield EventStream(stream, self._failures)
        except trio.ClosedResourceError as exc:
            raise ClientClosed(f"{name}: the client is closed") from exc

    async def events_publish(
        self, topic: str, type_url: str, value: bytes, *, deadline: float | None = None
    ) -> None:
        await self._unary(
            "Events.Publish",
            self._events.Publish,
            events_pb2.PublishRequest(topic=topic, event=AnyPb(type_url=type_url, value=value)),
            deadline,
        )
