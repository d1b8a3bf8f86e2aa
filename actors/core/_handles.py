"""Container, Task and Process handles: thin, typed fronts for a container actor.

A handle holds the ids, the actor and what containerd already told us (the pid, the stdio),
so no method re-reads state by id. Each method sends one command to the actor and waits for
its reply; the RPCs each costs are listed in its docstring.
"""

from __future__ import annotations

import signal as signal_module
from typing import TYPE_CHECKING, Any, TypeVar, final

import trio

from ..errors import FailedPrecondition, NotFound
from . import _commands as cmd
from ._container import ActorStatistics, ContainerActor, ProcessState, RestartStatus, call_actor
from ._ids import validate_id
from .metrics import ProcessSummary, TaskStats, decode_metric, decode_process_info
from .spec import (
    LinuxResources,
    Spec,
    decode_spec,
    encode_process,
    encode_resources,
    exec_process_from,
)
from .spec import Process as ProcessSpec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._container import ContainerRecord
    from .events import ExitStatus
    from .stdio import DirectIO

__all__ = ["Container", "Process", "Task"]

R = TypeVar("R")


class _NoPublicConstructor(type):
    # Any: a metaclass forwards whatever its classes' constructors take.
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{cls.__name__} handles come from a Client, not a constructor")

    def _create(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs)


class Process(metaclass=_NoPublicConstructor):
    """An exec'd process (or, through :class:`Task`, the container's init process)."""

    def __init__(self, actor: ContainerActor, exec_id: str, pid: int, io: DirectIO | None) -> None:
        self._actor = actor
        self._exec_id = exec_id
        self._pid = pid
        self.io = io

    @property
    def container_id(self) -> str:
        return self._actor.container_id

    @property
    def id(self) -> str:
        """The process id: the exec id, or the container id for the init process."""
        return self._exec_id or self._actor.container_id

    @property
    def pid(self) -> int:
        """The host pid containerd reported (0 before the process started)."""
        return self._pid

    async def _call(self, command: cmd.Command[R]) -> R:
        return await call_actor(self._actor, command)

    async def start(self) -> int:
        """Start the created process (1 RPC: Tasks.Start); returns its pid."""
        self._pid = await self._call(cmd.StartProcess(exec_id=self._exec_id))
        return self._pid

    async def kill(self, signal: int = signal_module.SIGTERM, *, all: bool = False) -> None:
        """Send a signal (1 RPC: Tasks.Kill). NotFound if the process already exited."""
        await self._call(cmd.Kill(exec_id=self._exec_id, signal=int(signal), all=all))

    async def wait(self) -> ExitStatus:
        """Wait for the exit event (0 RPCs); returns at once if it already exited."""
        return await self._call(cmd.Wait(exec_id=self._exec_id))

    async def resize(self, width: int, height: int) -> None:
        """Resize the process's terminal (1 RPC: Tasks.ResizePty)."""
        await self._call(cmd.Resize(exec_id=self._exec_id, width=width, height=height))

    async def close_stdin(self) -> None:
        """Close our stdin writer, then Tasks.CloseIO (1 RPC) so the process sees EOF."""
        await self._call(cmd.CloseStdin(exec_id=self._exec_id))

    async def status(self, *, refresh: bool = False) -> ProcessState:
        """What the actor knows (0 RPCs), or containerd's view with ``refresh`` (1 RPC)."""
        return await self._call(cmd.Status(exec_id=self._exec_id, refresh=refresh))

    async def delete(self) -> ExitStatus:
        """Delete the stopped process (1 RPC) and remove its FIFOs; returns its exit status."""
        return await self._call(cmd.DeleteProcess(exec_id=self._exec_id))


@final
class Task(Process):
    """The container's init process plus the task-wide operations."""

    async def pause(self) -> None:
        """Freeze every process of the task (1 RPC: Tasks.Pause)."""
        await self._call(cmd.Pause())

    async def resume(self) -> None:
        """Thaw the task (1 RPC: Tasks.Resume)."""
        await self._call(cmd.Resume())

    async def pids(self) -> list[int]:
        """Host pids of the task's processes (1 RPC: Tasks.ListPids)."""
        processes = await self._call(cmd.Pids())
        return [int(p.pid) for p in processes]

    async def stats(self) -> TaskStats:
        """cgroup statistics of the task, decoded from v1 or v2 metrics (1 RPC: Tasks.Metrics)."""
        metrics = await self._call(cmd.Metrics())
        if not metrics:
            raise NotFound(f"no metrics received for task {self.container_id}")
        return decode_metric(metrics[0])

    async def summary(self) -> list[ProcessSummary]:
        """Every process of the task with its exec id, if any (1 RPC: Tasks.ListPids)."""
        processes = await self._call(cmd.Pids())
        return [decode_process_info(p) for p in processes]

    async def exec(
        self,
        exec_id: str,
        process_spec: ProcessSpec,
        *,
        with_stdin: bool = False,
        attach_stdio: cmd.StdioCallback | None = None,
    ) -> Process:
        """Add and start a process in the task (2 RPCs: Tasks.Exec, Tasks.Start)."""
        validate_id(exec_id, kind="exec id")
        if not isinstance(process_spec, ProcessSpec):
            raise TypeError("process_spec must be an actors.core.spec.Process")
        terminal = bool(process_spec.terminal)
        # Add and start in one actor command: a caller cancelled meanwhile leaves either
        # no process or a started one.
        started = await self._call(
            cmd.CreateExec(
                exec_id=exec_id,
                process_spec=encode_process(process_spec),
                terminal=terminal,
                with_stdin=with_stdin,
                attach_stdio=attach_stdio,
            )
        )
        process: Process = Process._create(self._actor, exec_id, started.pid, started.io)
        return process

    async def process(self, exec_id: str) -> Process:
        """A handle for a process this client exec'd earlier (0 RPCs)."""
        validate_id(exec_id, kind="exec id")
        state = await self._call(cmd.Status(exec_id=exec_id))
        process: Process = Process._create(
            self._actor, exec_id, state.pid, self._actor.io_of(exec_id)
        )
        return process

    async def update_resources(self, resources: LinuxResources) -> None:
        """Change the task's cgroup limits (1 RPC: Tasks.Update)."""
        await self._call(cmd.Update(resources=encode_resources(resources)))

    async def create_checkpoint(self, directory: str, *, exit: bool = False) -> None:
        """CRIU-dump the task into ``directory`` (1 RPC: Tasks.Checkpoint with image_path)."""
        await self._call(cmd.Checkpoint(directory=directory, exit=exit))

    async def force_delete(self, *, exit_timeout: float = 10.0) -> ExitStatus:
        """Kill every process, wait for the exit event, delete (2 RPCs + the exit event)."""
        try:
            await self.kill(signal_module.SIGKILL, all=True)
        except (NotFound, FailedPrecondition):
            pass  # already gone: the exit event (or our state) says so
        with trio.fail_after(exit_timeout):
            await self.wait()
        return await self.delete()


class Container(metaclass=_NoPublicConstructor):
    """A containerd container owned by this client's actor for it."""

    def __init__(self, actor: ContainerActor, record: ContainerRecord) -> None:
        self._actor = actor
        self._record = record

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._record.labels)

    @property
    def runtime(self) -> str:
        return self._record.runtime

    @property
    def spec_json(self) -> bytes:
        return self._record.spec

    def statistics(self) -> ActorStatistics:
        return self._actor.statistics()

    def restart_status(self) -> RestartStatus:
        """The restart policy, count and whether a restart is pending (0 RPCs)."""
        return self._actor.restart_status()

    def task_state(self) -> ProcessState | None:
        """The task as this container's actor knows it (0 RPCs), or None without one."""
        return self._actor.snapshot()

    def spec(self) -> Spec:
        """The OCI spec containerd holds for this container (0 RPCs: kept from create)."""
        return decode_spec(self._record.spec)

    def exec_spec(
        self,
        args: Sequence[str],
        *,
        terminal: bool = False,
        env: Sequence[str] | None = None,
        cwd: str | None = None,
    ) -> ProcessSpec:
        """A process spec for :meth:`Task.exec` that inherits user, caps and env from the spec."""
        return exec_process_from(self.spec(), list(args), terminal=terminal, env=env, cwd=cwd)

    async def new_task(
        self,
        *,
        with_stdin: bool = False,
        attach_stdio: cmd.StdioCallback | None = None,
        checkpoint_dir: str | None = None,
    ) -> Task:
        """Create the task without starting it (1 RPC: Tasks.Create).

        The FIFOs exist and ``attach_stdio`` has run before the RPC, so no output is lost.
        """
        return await self._create_task(with_stdin, attach_stdio, checkpoint_dir, start=False)

    async def start(
        self,
        *,
        with_stdin: bool = False,
        attach_stdio: cmd.StdioCallback | None = None,
        checkpoint_dir: str | None = None,
    ) -> Task:
        """Create and start the task (2 RPCs: Tasks.Create, Tasks.Start).

        Both happen in one actor command: a caller that is cancelled meanwhile leaves either
        no task or a started one, never a created-but-not-started task.

        Who drains the output: whoever reads ``task.io.stdout``/``stderr`` (or keeps the
        :class:`DirectIO` that ``attach_stdio`` receives before the task exists). Nothing is
        dropped: past the buffer (1 MiB per stream) the process blocks until it is read, and
        what is unread when the task is deleted goes with it. For a process that must never
        block, call ``io.configure_output(mode=OutputMode.LOSSY)`` in ``attach_stdio``; then
        drops are counted and reported to the reader. The control plane (``serve``) is the
        reader of every task it starts and keeps the output in a log on disk.
        """
        return await self._create_task(with_stdin, attach_stdio, checkpoint_dir, start=True)

    async def _create_task(
        self,
        with_stdin: bool,
        attach_stdio: cmd.StdioCallback | None,
        checkpoint_dir: str | None,
        *,
        start: bool,
    ) -> Task:
        started = await call_actor(
            self._actor,
            cmd.CreateTask(
                with_stdin=with_stdin,
                attach_stdio=attach_stdio,
                checkpoint_dir=checkpoint_dir,
                start=start,
            ),
        )
        task: Task = Task._create(self._actor, "", started.pid, started.io)
        return task

    async def task(self) -> Task:
        """The existing task, without stdio (0 RPCs if this actor knows it, else 1)."""
        loaded = await call_actor(self._actor, cmd.LoadTask(attach=False))
        task: Task = Task._create(self._actor, "", loaded.state.pid, None)
        return task

    async def attach_task(self, attach_stdio: cmd.StdioCallback | None = None) -> Task:
        """The existing task with its stdio re-opened (0 or 1 RPC). NotFound without a task."""
        loaded = await call_actor(self._actor, cmd.LoadTask(attach=True, attach_stdio=attach_stdio))
        task: Task = Task._create(self._actor, "", loaded.state.pid, loaded.io)
        return task

    async def delete(self) -> None:
        """Delete the container record (1 RPC). FailedPrecondition while a task exists.

        A container with a snapshot (created with ``snapshot_key``) also removes it (one
        more RPC, Snapshots.Remove), as ``ctr run --rm`` does.
        """
        await call_actor(self._actor, cmd.DeleteContainer())
