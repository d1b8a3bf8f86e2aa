"""The container actor's mailbox vocabulary: one tagged union, dispatched with ``match``.

Tags are API (they show up in logs and statistics) and are never reused. Commands carry
only what the actor needs; replies travel on a one-shot channel next to the command.

Each command names its reply type: ``Kill`` is a ``Command[None]``, ``CreateTask`` a
``Command[Started]``, so ``call_actor(actor, command)`` returns what that command answers.
The actor passes every reply through :meth:`Command.reply`, which is where mypy checks that
the handler of each command returns that command's reply type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from actors.containerd.pb.containerd.types import metrics_pb2
from actors.containerd.pb.containerd.types.task import task_pb2

from ._process_state import ProcessState
from .events import ExitStatus
from .stdio import DirectIO

if TYPE_CHECKING:
    from .events import TaskEvent

# Any: a callback's return value is only awaited when it is awaitable, never used.
StdioCallback = Callable[[DirectIO], Any]

R = TypeVar("R")


class Command(msgspec.Struct, Generic[R], frozen=True, kw_only=True, tag_field="op"):
    """A mailbox item whose reply is an ``R``."""

    def reply(self, value: R) -> R:
        """The reply to this command (identity at run time; a type check for mypy)."""
        return value


class Started(msgspec.Struct, frozen=True, kw_only=True):
    """A created (and maybe started) process: its pid (0 until started) and its stdio."""

    pid: int
    io: DirectIO | None


class Loaded(msgspec.Struct, frozen=True, kw_only=True):
    """A task loaded by the actor, with its stdio when it was asked to attach."""

    state: ProcessState
    io: DirectIO | None


class CreateTask(Command[Started], tag="create_task", frozen=True, kw_only=True):
    with_stdin: bool = False
    start: bool = False
    attach_stdio: StdioCallback | None = None
    checkpoint_dir: str | None = None


class StartProcess(Command[int], tag="start_process", frozen=True, kw_only=True):
    exec_id: str = ""


class CreateExec(Command[Started], tag="create_exec", frozen=True, kw_only=True):
    exec_id: str
    process_spec: bytes
    terminal: bool
    with_stdin: bool = False
    attach_stdio: StdioCallback | None = None
    start: bool = True


class Kill(Command[None], tag="kill", frozen=True, kw_only=True):
    exec_id: str = ""
    signal: int
    all: bool = False


class Wait(Command[ExitStatus], tag="wait", frozen=True, kw_only=True):
    exec_id: str = ""


class CloseStdin(Command[None], tag="close_stdin", frozen=True, kw_only=True):
    exec_id: str = ""


class Resize(Command[None], tag="resize", frozen=True, kw_only=True):
    exec_id: str = ""
    width: int
    height: int


class Pause(Command[None], tag="pause", frozen=True, kw_only=True):
    pass


class Resume(Command[None], tag="resume", frozen=True, kw_only=True):
    pass


class Pids(Command[list[task_pb2.ProcessInfo]], tag="pids", frozen=True, kw_only=True):
    pass


class Metrics(Command[list[metrics_pb2.Metric]], tag="metrics", frozen=True, kw_only=True):
    pass


class Status(Command[ProcessState], tag="status", frozen=True, kw_only=True):
    exec_id: str = ""
    refresh: bool = False


class Update(Command[None], tag="update", frozen=True, kw_only=True):
    resources: bytes


class Checkpoint(Command[None], tag="checkpoint", frozen=True, kw_only=True):
    directory: str
    exit: bool = False


class LoadTask(Command[Loaded], tag="load_task", frozen=True, kw_only=True):
    attach_stdio: StdioCallback | None = None
    attach: bool = False


class DeleteProcess(Command[ExitStatus], tag="delete_process", frozen=True, kw_only=True):
    exec_id: str = ""


class DeleteContainer(Command[None], tag="delete_container", frozen=True, kw_only=True):
    pass


class DeliverEvent(Command[None], tag="event", frozen=True, kw_only=True):
    event: TaskEvent
    replayed: bool = False


class ContainerGone(Command[None], tag="container_gone", frozen=True, kw_only=True):
    """Another client removed the container record: the actor ends (no reply)."""


class Reconcile(Command[None], tag="reconcile", frozen=True, kw_only=True):
    """What Tasks.List said about this container's task while we may have been blind."""

    epoch: int
    found: bool
    pid: int = 0
    status: int = 0
    exit_status: int = 0
    exited_at_seconds: int = 0
    exited_at_nanos: int = 0


class AutoRestart(Command[None], tag="auto_restart", frozen=True, kw_only=True):
    """The actor's own: restart the task of ``epoch`` under the restart policy."""

    epoch: int


# Every item a container actor's mailbox takes (events and reconcile results included).
ActorCommand = (
    CreateTask
    | StartProcess
    | CreateExec
    | Kill
    | Wait
    | CloseStdin
    | Resize
    | Pause
    | Resume
    | Pids
    | Metrics
    | Status
    | Update
    | Checkpoint
    | LoadTask
    | DeleteProcess
    | DeleteContainer
    | DeliverEvent
    | Reconcile
    | ContainerGone
    | AutoRestart
)
