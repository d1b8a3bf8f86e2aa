"""The container actor's mailbox vocabulary: one tagged union, dispatched with ``match``.

Tags are API (they show up in logs and statistics) and are never reused. Commands carry
only what the actor needs; replies travel on a one-shot channel next to the command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .stdio import DirectIO

if TYPE_CHECKING:
    from .events import TaskEvent

StdioCallback = Callable[[DirectIO], Any]


class _Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    pass


class CreateTask(_Command, tag="create_task", frozen=True, kw_only=True):
    with_stdin: bool = False
    start: bool = False
    attach_stdio: StdioCallback | None = None
    checkpoint_dir: str | None = None


class StartProcess(_Command, tag="start_process", frozen=True, kw_only=True):
    exec_id: str = ""


class CreateExec(_Command, tag="create_exec", frozen=True, kw_only=True):
    exec_id: str
    process_spec: bytes
    terminal: bool
    with_stdin: bool = False
    attach_stdio: StdioCallback | None = None
    start: bool = True


class Kill(_Command, tag="kill", frozen=True, kw_only=True):
    exec_id: str = ""
    signal: int
    all: bool = False


class Wait(_Command, tag="wait", frozen=True, kw_only=True):
    exec_id: str = ""


class CloseStdin(_Command, tag="close_stdin", frozen=True, kw_only=True):
    exec_id: str = ""


class Resize(_Command, tag="resize", frozen=True, kw_only=True):
    exec_id: str = ""
    width: int
    height: int


class Pause(_Command, tag="pause", frozen=True, kw_only=True):
    pass


class Resume(_Command, tag="resume", frozen=True, kw_only=True):
    pass


class Pids(_Command, tag="pids", frozen=True, kw_only=True):
    pass


class Metrics(_Command, tag="metrics", frozen=True, kw_only=True):
    pass


class Status(_Command, tag="status", frozen=True, kw_only=True):
    exec_id: str = ""
    refresh: bool = False


class Update(_Command, tag="update", frozen=True, kw_only=True):
    resources: bytes


class Checkpoint(_Command, tag="checkpoint", frozen=True, kw_only=True):
    directory: str
    exit: bool = False


class LoadTask(_Command, tag="load_task", frozen=True, kw_only=True):
    attach_stdio: StdioCallback | None = None
    attach: bool = False


class DeleteProcess(_Command, tag="delete_process", frozen=True, kw_only=True):
    exec_id: str = ""


class DeleteContainer(_Command, tag="delete_container", frozen=True, kw_only=True):
    pass


class Crash(_Command, tag="crash", frozen=True, kw_only=True):
    """Test hook: make the actor fail as if a handler had a bug."""

    reason: str = "crash requested"


class DeliverEvent(_Command, tag="event", frozen=True, kw_only=True):
    event: TaskEvent
    replayed: bool = False


class ContainerGone(_Command, tag="container_gone", frozen=True, kw_only=True):
    """Another client removed the container record: the actor ends (no reply)."""


class Reconcile(_Command, tag="reconcile", frozen=True, kw_only=True):
    """What Tasks.List said about this container's task while we may have been blind."""

    epoch: int
    found: bool
    pid: int = 0
    status: int = 0
    exit_status: int = 0
    exited_at_seconds: int = 0
    exited_at_nanos: int = 0


class AutoRestart(_Command, tag="auto_restart", frozen=True, kw_only=True):
    """The actor's own: restart the task of ``epoch`` under the restart policy."""

    epoch: int


Command = (
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
    | Crash
    | DeliverEvent
    | Reconcile
    | ContainerGone
    | AutoRestart
)
