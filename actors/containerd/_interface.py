"""What the rest of the package needs of a containerd connection, as a typing Protocol.

:class:`~actors.containerd._remote.Remote` (gRPC to a real containerd) and
:class:`actors.testing.FakeRemote` (in memory) both satisfy :class:`ContainerdRemote`; mypy
checks it where each is handed to the core (``run_client``) and in ``actors.testing``, so the
two cannot drift apart. Each method is one RPC counted as ``Service.Method`` in
:meth:`ContainerdRemote.statistics`; see ``Remote`` for what each one sends.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from grpclib.client import Channel

    from ._mounts import Mount
    from ._remote import RemoteStatistics
    from ._streams import Duplex, ResponseStream
    from .pb.containerd.services.containers.v1 import containers_pb2
    from .pb.containerd.services.events.v1 import events_pb2
    from .pb.containerd.services.tasks.v1 import tasks_pb2
    from .pb.containerd.services.version.v1 import version_pb2
    from .pb.containerd.types import metrics_pb2
    from .pb.containerd.types.task import task_pb2

__all__ = ["ContainerdRemote", "EnvelopeStream"]


class EnvelopeStream(Protocol):
    """An Events.Subscribe stream: raises trio.EndOfChannel when containerd ends it."""

    async def receive(self) -> events_pb2.Envelope: ...


class ContainerdRemote(Protocol):
    """One containerd namespace, seen from Trio: typed, counted, our errors only."""

    namespace: str
    default_deadline: float

    def statistics(self) -> RemoteStatistics: ...

    # -- generic calls, for the services typed in actors.images -------------------------
    # Any: ``method`` is a grpclib stub method of any service; the request and response
    # types are that method's, and the typed wrappers in actors.images annotate them.

    @property
    def channel(self) -> Channel: ...

    async def call(
        self,
        name: str,
        method: Any,
        request: object,
        *,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any: ...

    def open_server_stream(
        self,
        name: str,
        method: Any,
        request: object,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[ResponseStream[Any]]: ...

    def open_duplex(
        self,
        name: str,
        method: Any,
        *,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[Duplex[Any, Any]]: ...

    # -- Version / health -----------------------------------------------------------------

    async def version(self, *, deadline: float | None = None) -> version_pb2.VersionResponse: ...

    async def health_check(self, *, deadline: float | None = None) -> int: ...

    # -- Containers -------------------------------------------------------------------------

    async def containers_create(
        self, container: containers_pb2.Container, *, deadline: float | None = None
    ) -> containers_pb2.Container: ...

    async def containers_get(
        self, container_id: str, *, deadline: float | None = None
    ) -> containers_pb2.Container: ...

    async def containers_list(
        self, filters: list[str] | None = None, *, deadline: float | None = None
    ) -> list[containers_pb2.Container]: ...

    async def containers_update(
        self,
        container: containers_pb2.Container,
        paths: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> containers_pb2.Container: ...

    async def containers_delete(
        self, container_id: str, *, deadline: float | None = None
    ) -> None: ...

    # -- Tasks ----------------------------------------------------------------------------

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
    ) -> int: ...

    async def tasks_start(
        self, container_id: str, exec_id: str = "", *, deadline: float | None = None
    ) -> int: ...

    async def tasks_delete(
        self, container_id: str, *, deadline: float | None = None
    ) -> tasks_pb2.DeleteResponse: ...

    async def tasks_delete_process(
        self, container_id: str, exec_id: str, *, deadline: float | None = None
    ) -> tasks_pb2.DeleteResponse: ...

    async def tasks_get(
        self, container_id: str, exec_id: str = "", *, deadline: float | None = None
    ) -> task_pb2.Process: ...

    async def tasks_list(self, *, deadline: float | None = None) -> list[task_pb2.Process]: ...

    async def tasks_kill(
        self,
        container_id: str,
        signal: int,
        *,
        exec_id: str = "",
        all: bool = False,
        deadline: float | None = None,
    ) -> None: ...

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
    ) -> None: ...

    async def tasks_resize_pty(
        self,
        container_id: str,
        width: int,
        height: int,
        *,
        exec_id: str = "",
        deadline: float | None = None,
    ) -> None: ...

    async def tasks_close_io(
        self, container_id: str, *, exec_id: str = "", deadline: float | None = None
    ) -> None: ...

    async def tasks_pause(self, container_id: str, *, deadline: float | None = None) -> None: ...

    async def tasks_resume(self, container_id: str, *, deadline: float | None = None) -> None: ...

    async def tasks_list_pids(
        self, container_id: str, *, deadline: float | None = None
    ) -> list[task_pb2.ProcessInfo]: ...

    async def tasks_checkpoint(
        self,
        container_id: str,
        *,
        image_path: str,
        exit: bool = False,
        deadline: float | None = None,
    ) -> tasks_pb2.CheckpointTaskResponse: ...

    async def tasks_update(
        self, container_id: str, resources: bytes, *, deadline: float | None = None
    ) -> None: ...

    async def tasks_metrics(
        self, filters: list[str], *, deadline: float | None = None
    ) -> list[metrics_pb2.Metric]: ...

    async def tasks_wait(
        self, container_id: str, exec_id: str = "", *, deadline: float | None = None
    ) -> tasks_pb2.WaitResponse: ...

    # -- Events ---------------------------------------------------------------------------

    def events_subscribe(self, filters: list[str]) -> AbstractAsyncContextManager[EnvelopeStream]:
        """Open Events.Subscribe (one counted call); the stream raises our errors."""
        ...

    async def events_publish(
        self, topic: str, type_url: str, value: bytes, *, deadline: float | None = None
    ) -> None: ...
