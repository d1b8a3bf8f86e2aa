"""A "stateless" client: containerd driven the way libcontainerd did before moby's 2022 refactor.

Pre-refactor libcontainerd (moby 4bafaa00aa^) kept no handles: every call took string ids and
re-read the container and the task before acting. This client reproduces that call pattern
over :class:`actors._remote.Remote` directly (no actors), so the value of keeping state shows
as a ratio measured in the same run, with the same RPC counters.

RPCs it makes, in order (C. = Containers, T. = Tasks):

========================  ==============================================================  ====
step                      calls                                                           RPCs
========================  ==============================================================  ====
new container             C.Create                                                           1
start                     C.Get (getContainer), C.Get (Spec), C.Get (Labels),                6
                          C.Get (NewTask), T.Create, T.Start
wait for exit             0: the exit event from its own Events.Subscribe stream              0
delete task               C.Get + T.Get (getProcess), T.Get (Delete's guard), T.Delete       4
delete container          C.Get (getContainer), C.Get (Labels), T.Get (must be NotFound),    5
                          C.Get, C.Delete
**lifecycle**                                                                               **16**
exec                      C.Get + T.Get (getProcess), C.Get (Labels), T.Exec, T.Start        5
exec exit clean-up        C.Get + T.Get + T.Get{exec} (getProcess), C.Get (getContainer),     7
                          C.Get (Labels), T.Get{exec} (Delete's guard), T.DeleteProcess
stats / pids / status     C.Get + T.Get (getProcess), then T.Metrics / T.ListPids / T.Get      3
========================  ==============================================================  ====

dockerd 20.10 also wraps Containers.Create in Leases.Create/Leases.Delete (18 per lifecycle);
our proto subset has no Leases service, so this client is flattered by those 2 RPCs.
Stdio is handled like ours: FIFOs created and drained for every process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import msgspec
import trio
from google.protobuf.any_pb2 import Any as AnyPb

from actors.containerd._bridge import AsyncioBridge
from actors.containerd._remote import Remote
from actors.containerd.pb.containerd.services.containers.v1 import containers_pb2
from actors.core.events import EventRouter, EventType, TaskEvent
from actors.core.spec import SPEC_TYPE_URL, Spec, encode_spec
from actors.core.stdio import DirectIO, FifoSet, OutputPipe
from actors.errors import NotFound

RPCS_PER_LIFECYCLE = 16
RPCS_PER_EXEC = 12
RPCS_PER_POLL = 3


class _Exit:
    __slots__ = ("code", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.code = -1


class StatelessClient:
    """Create with :func:`open_stateless`; every method re-reads what it needs by id."""

    def __init__(self, remote: Remote, nursery: trio.Nursery, io_root: str) -> None:
        self.remote = remote
        self._nursery = nursery
        self._io_root = io_root
        self._exits: dict[tuple[str, str], _Exit] = {}
        self._io: dict[tuple[str, str], tuple[DirectIO, list[trio.CancelScope]]] = {}

    def _on_event(self, event: TaskEvent) -> None:
        if event.type is EventType.EXIT:
            waiter = self._exits.get((event.info.container_id, event.info.process_id))
            if waiter is not None and not waiter.event.is_set():
                waiter.code = event.info.exit_code
                waiter.event.set()

    # -- containers and tasks ------------------------------------------------------------

    async def create(self, container_id: str, spec: Spec) -> None:
        if spec.linux is not None and spec.linux.cgroups_path is None:
            linux = msgspec.structs.replace(
                spec.linux, cgroups_path=f"/{self.remote.namespace}/{container_id}"
            )
            spec = msgspec.structs.replace(spec, linux=linux)
        record = containers_pb2.Container(id=container_id)
        record.runtime.name = "io.containerd.runc.v2"
        record.spec.CopyFrom(AnyPb(type_url=SPEC_TYPE_URL, value=encode_spec(spec)))
        await self.remote.containers_create(record)

    async def _get_process(self, container_id: str, exec_id: str = "") -> None:
        await self.remote.containers_get(container_id)
        await self.remote.tasks_get(container_id)
        if exec_id:
            await self.remote.tasks_get(container_id, exec_id)

    async def start(self, container_id: str) -> int:
        for _ in range(4):  # getContainer, Spec, Labels, NewTask's own Get
            await self.remote.containers_get(container_id)
        io = await self._open_io(container_id, container_id)
        self._exits[(container_id, container_id)] = _Exit()
        await self.remote.tasks_create(container_id, stdout=io.fifos.stdout, stderr=io.fifos.stderr)
        return await self.remote.tasks_start(container_id)

    async def wait(self, container_id: str, exec_id: str = "") -> int:
        waiter = self._exits[(container_id, exec_id or container_id)]
        await waiter.event.wait()
        return waiter.code

    async def delete_task(self, container_id: str) -> int:
        await self._get_process(container_id)
        await self.remote.tasks_get(container_id)
        response = await self.remote.tasks_delete(container_id)
        self._close_io(container_id, container_id)
        self._exits.pop((container_id, container_id), None)
        return int(response.exit_status)

    async def delete(self, container_id: str) -> None:
        await self.remote.containers_get(container_id)
        await self.remote.containers_get(container_id)
        with contextlib.suppress(NotFound):
            await self.remote.tasks_get(container_id)
        await self.remote.containers_get(container_id)
        await self.remote.containers_delete(container_id)

    async def lifecycle(self, container_id: str, spec: Spec) -> int:
        await self.create(container_id, spec)
        await self.start(container_id)
        code = await self.wait(container_id)
        await self.delete_task(container_id)
        await self.delete(container_id)
        return code

    # -- exec and polling ------------------------------------------------------------------

    async def exec(self, container_id: str, exec_id: str, process: bytes) -> int:
        await self._get_process(container_id)
        await self.remote.containers_get(container_id)  # Labels
        io = await self._open_io(container_id, exec_id)
        self._exits[(container_id, exec_id)] = _Exit()
        await self.remote.tasks_exec(
            container_id,
            exec_id,
            spec=process,
            stdout=io.fifos.stdout,
            stderr=io.fifos.stderr,
        )
        return await self.remote.tasks_start(container_id, exec_id)

    async def clean_exec(self, container_id: str, exec_id: str) -> int:
        """What the pre-refactor event loop did on every exec exit."""
        await self._get_process(container_id, exec_id)
        await self.remote.containers_get(container_id)  # getContainer
        await self.remote.containers_get(container_id)  # Labels
        await self.remote.tasks_get(container_id, exec_id)  # Process.Delete's guard
        response = await self.remote.tasks_delete_process(container_id, exec_id)
        self._close_io(container_id, exec_id)
        self._exits.pop((container_id, exec_id), None)
        return int(response.exit_status)

    async def stats(self, container_id: str) -> int:
        await self._get_process(container_id)
        return len(await self.remote.tasks_metrics([f"id=={container_id}"]))

    async def pids(self, container_id: str) -> int:
        await self._get_process(container_id)
        return len(await self.remote.tasks_list_pids(container_id))

    async def status(self, container_id: str) -> int:
        await self._get_process(container_id)
        return int((await self.remote.tasks_get(container_id)).status)

    # -- stdio -----------------------------------------------------------------------------

    async def _open_io(self, container_id: str, process_id: str) -> DirectIO:
        directory = os.path.join(self._io_root, container_id)
        io = DirectIO.open(FifoSet.for_process(directory, process_id, stdin=False, terminal=False))
        scopes = [trio.CancelScope() for _ in io.pipes()]
        self._io[(container_id, process_id)] = (io, scopes)
        for pipe, scope in zip(io.pipes(), scopes, strict=True):
            self._nursery.start_soon(_pump, pipe, scope)
        await trio.lowlevel.checkpoint()
        return io

    def _close_io(self, container_id: str, process_id: str) -> None:
        entry = self._io.pop((container_id, process_id), None)
        if entry is not None:
            io, scopes = entry
            for scope in scopes:
                scope.cancel()
            io.close()
        if process_id == container_id:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(self._io_root, container_id))

    def close_all_io(self) -> None:
        for container_id, process_id in list(self._io):
            self._close_io(container_id, process_id)


async def _pump(pipe: OutputPipe, scope: trio.CancelScope) -> None:
    with scope:
        await pipe.pump()


@contextlib.asynccontextmanager
async def open_stateless(
    address: str, namespace: str, io_root: str
) -> AsyncIterator[StatelessClient]:
    """A stateless client with its own channel and one event subscription for the namespace."""
    bridge = await AsyncioBridge.start()
    try:
        remote = await Remote.connect(bridge, address, namespace)
        async with trio.open_nursery() as nursery:
            client = StatelessClient(remote, nursery, io_root)
            router = EventRouter(remote, client._on_event)
            await nursery.start(router.run)
            try:
                yield client
            finally:
                client.close_all_io()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await bridge.aclose()
