"""A container's processes as a sans-IO state machine: inputs in, effects out.

The container actor (``_container.py``) is the Trio shell around this module: it performs
RPCs, feeds their outcomes and every event and reconcile result in here, and carries out
the effects returned (publish an event, answer waiters, forget a process). Nothing here
awaits, sleeps, reads a clock or touches a file, so every ordering the real daemon cannot
force is a plain function call in ``tests/test_process_state.py``.

One process (the init, whose process id is the container id, or an exec, whose process id
is its exec id) moves through containerd's statuses:

=========  ==================================================  =========  =====================
state      input                                               next       effects
=========  ==================================================  =========  =====================
(none)     ``created`` (Tasks.Create) / ``exec_added``         CREATED    -
(none)     ``adopt`` (Tasks.Get/List of a task we did not      as found   (shell posts a
           start); a stopped task stays RUNNING until its                 reconcile)
           reconcile reports the exit, unless it was published
(none)     event create / exec-added / start / exec-started    CREATED /  Publish
           of a task or exec we do not know (another client)   RUNNING
CREATED    ``started`` (Tasks.Start) / event start, exec-      RUNNING    Publish (events)
           started
RUNNING    ``paused`` (Tasks.Pause) / event paused             PAUSED     Publish (events)
PAUSED     ``resumed`` (Tasks.Resume) / event resumed          RUNNING    Publish (events)
any live   ``killed`` (Tasks.Kill acknowledged)                same       ``signalled`` set
any        event oom                                           same       ``oom_killed`` set,
                                                                          Publish (the first
                                                                          per task only)
any live   exit: event, ``reconcile`` (Tasks.List/Get says     STOPPED    Publish once, Wake
           STOPPED or the task is gone), ``refreshed``
           (status refresh says STOPPED), ``deleted`` (Delete
           response of a process whose exit we never heard)
STOPPED    exit again, any code (duplicate)                    STOPPED    counted, nothing else
any        exit whose pid is not this process's (stale)        same       counted, nothing else
STOPPED    ``deleted``                                         (none)     Forget
any        ``deleted`` of the init                             (none)     Forget every exec
any        ``start_failed``                                    (none)     Forget (error)
any        ``reset`` (the actor crashed)                       (none)     -
=========  ==================================================  =========  =====================

Rules the table does not show:

- An exit is published exactly once per (process id, pid): whichever path learns it first
  (event, reconcile, status refresh or delete response) publishes it, through the same
  :class:`Publish` effect, and remembers it; every later report is a duplicate. Exits of a
  process we do not track are published too (the Backend hears every exit of the namespace)
  and remembered, so a task adopted later with that pid takes the exit as known.
- A reconcile carries the ``epoch`` it was taken at; the epoch moves whenever the task
  changes identity (create, adopt, delete, reset), so an answer about an older task is never
  applied to a newer one. A reconcile that finds the task gone synthesises its exit (code
  255 with ``EventInfo.error`` saying why); so do the execs still running when the init's
  exit is learned that way.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
from collections.abc import Callable
from typing import Final, Generic, TypeVar

import msgspec

from .events import EventInfo, EventType, ExitStatus, TaskEvent

# Exits decided by us rather than reported by a process (moby's convention).
EXIT_CODE_UNKNOWN: Final = 255
# Published exits remembered per container, for de-duplication after the process is gone.
EXITS_REMEMBERED: Final = 64
EXIT_TOPIC: Final = "/tasks/exit"
VANISHED: Final = "the task vanished while the event stream was down; its exit status is unknown"
ENDED_WITH_TASK: Final = "the process ended with its task; its exit status is unknown"


class TaskStatus(enum.StrEnum):
    """containerd's process status names (``containerd.v1.types.Status``)."""

    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    PAUSING = "pausing"


_STATUS_BY_WIRE: Final = {
    0: TaskStatus.UNKNOWN,
    1: TaskStatus.CREATED,
    2: TaskStatus.RUNNING,
    3: TaskStatus.STOPPED,
    4: TaskStatus.PAUSED,
    5: TaskStatus.PAUSING,
}


def status_from_wire(value: int) -> TaskStatus:
    return _STATUS_BY_WIRE.get(value, TaskStatus.UNKNOWN)


class ProcessState(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one process as the actor knows it.

    ``oom_killed``: containerd reported an OOM kill in the task's cgroup. ``signalled``: the
    last signal containerd acknowledged delivering to it (0: none).
    """

    container_id: str
    process_id: str
    pid: int
    status: TaskStatus
    exit: ExitStatus | None = None
    oom_killed: bool = False
    signalled: int = 0


@dataclasses.dataclass(eq=False, kw_only=True)
class ProcessRecord:
    """What the machine knows of one process (the shell may subclass it to add its I/O)."""

    process_id: str
    exec_id: str
    pid: int = 0
    status: TaskStatus = TaskStatus.CREATED
    exit: ExitStatus | None = None
    oom_killed: bool = False
    signalled: int = 0

    @property
    def live(self) -> bool:
        return self.exit is None

    def snapshot(self, container_id: str) -> ProcessState:
        return ProcessState(
            container_id=container_id,
            process_id=self.process_id,
            pid=self.pid,
            status=self.status,
            exit=self.exit,
            oom_killed=self.oom_killed,
            signalled=self.signalled,
        )


# -- effects ------------------------------------------------------------------------------


class Publish(msgspec.Struct, frozen=True):
    """Hand this event to the Backend and the subscribers (unless it was replayed)."""

    event: TaskEvent


class Wake(msgspec.Struct, frozen=True):
    """Answer every waiter of this process with its exit status.

    ``synthetic``: the exit was learned other than from its event (found at restore,
    refresh or Delete): a restart policy treats it as a daemon restart's discovery.
    """

    process_id: str
    exit: ExitStatus
    synthetic: bool = False


@dataclasses.dataclass(frozen=True)
class Forget:
    """Stop tracking this process: close its stdio, answer its waiters (exit, or NotFound).

    It carries the record itself: the machine no longer holds it.
    """

    record: ProcessRecord
    reason: str

    @property
    def process_id(self) -> str:
        return self.record.process_id


Effect = Publish | Wake | Forget

R = TypeVar("R", bound=ProcessRecord)


class ProcessMachine(Generic[R]):
    """The processes of one container. Every input returns the effects to perform, in order.

    ``new_record(process_id, exec_id)`` makes the record of a process first heard of in an
    event (the shell's subclass of :class:`ProcessRecord`).
    """

    def __init__(self, container_id: str, new_record: Callable[[str, str], R]) -> None:
        self.container_id = container_id
        self._new_record = new_record
        self.init: R | None = None
        self.execs: dict[str, R] = {}
        self.epoch = 0
        self.duplicate_exits = 0
        self.stale_exits = 0
        self.reconciled_exits = 0
        self.duplicate_ooms = 0
        # (process id, pid) -> the exit published for it, oldest first.
        self._published: collections.OrderedDict[tuple[str, int], ExitStatus] = (
            collections.OrderedDict()
        )
        # Pids of init processes we stopped tracking: a late create/start event of one must
        # not bring it back.
        self._retired: collections.OrderedDict[int, None] = collections.OrderedDict()

    # -- queries ----------------------------------------------------------------------------

    def process(self, process_id: str) -> R | None:
        """By process id: the container id names the init, anything else an exec."""
        if process_id == self.container_id:
            return self.init
        return self.execs.get(process_id)

    def processes(self) -> list[R]:
        return [p for p in (self.init, *self.execs.values()) if p is not None]

    def published_exit(self, process_id: str, pid: int) -> ExitStatus | None:
        return self._published.get((process_id, pid))

    def published_keys(self) -> list[tuple[str, int]]:
        return list(self._published)

    # -- RPC outcomes -----------------------------------------------------------------------

    def created(self, record: R, pid: int) -> None:
        """Tasks.Create answered: ``record`` is the new init, CREATED with ``pid``."""
        record.pid = pid
        record.status = TaskStatus.CREATED
        self.init = record
        self.epoch += 1

    def exec_added(self, record: R) -> None:
        """Tasks.Exec answered: ``record`` is a new exec, CREATED."""
        record.status = TaskStatus.CREATED
        self.execs[record.process_id] = record

    def started(self, process_id: str, pid: int) -> None:
        """Tasks.Start answered with ``pid`` (its exit may already have been applied)."""
        proc = self.process(process_id)
        if proc is None:
            return
        proc.pid = pid
        if proc.exit is None:
            proc.status = TaskStatus.RUNNING

    def start_failed(self, process_id: str) -> list[Effect]:
        proc = self.process(process_id)
        if proc is None:
            return []
        self._remove(proc)
        return [Forget(proc, "failed to start")]

    def paused(self) -> None:
        if self.init is not None and self.init.exit is None:
            self.init.status = TaskStatus.PAUSED

    def resumed(self) -> None:
        if self.init is not None and self.init.exit is None:
            self.init.status = TaskStatus.RUNNING

    def killed(self, process_id: str, signal: int, *, all: bool = False) -> None:
        """Tasks.Kill acknowledged (``all``: every process of the task got it)."""
        targets = self.processes() if all and process_id == self.container_id else []
        proc = self.process(process_id)
        for target in targets or ([proc] if proc is not None else []):
            if target.exit is None:
                target.signalled = signal

    def deleted(
        self, process_id: str, exit_code: int, exited_at: dt.datetime | None
    ) -> tuple[ExitStatus, list[Effect]]:
        """Tasks.Delete(Process) answered. Returns the exit status to report and the effects.

        The exit the process already reported wins over Delete's (as in moby); an exit first
        learned here is published like any other.
        """
        proc = self.process(process_id)
        if proc is None:
            raise KeyError(process_id)
        effects: list[Effect] = []
        if proc.exit is None:
            info = EventInfo(
                container_id=self.container_id,
                process_id=proc.process_id,
                pid=proc.pid,
                exit_code=exit_code,
                exited_at=exited_at,
            )
            effects += self._exit(_synthetic_exit(info))
        status = proc.exit or ExitStatus(code=exit_code, exited_at=exited_at)
        self._remove(proc)
        effects.append(Forget(proc, "was deleted"))
        if not proc.exec_id:
            for other in list(self.execs.values()):
                self._remove(other)
                effects.append(Forget(other, "ended with its task"))
        return status, effects

    def refreshed(
        self,
        process_id: str,
        *,
        status: TaskStatus,
        pid: int,
        exit_code: int,
        exited_at: dt.datetime | None,
    ) -> list[Effect]:
        """Tasks.Get answered for a status refresh: a stop it reveals is an exit like others."""
        proc = self.process(process_id)
        if proc is None or proc.exit is not None:
            return []
        if pid and proc.pid and pid != proc.pid:
            return []  # another process under this id: its own events describe it
        if status is TaskStatus.STOPPED:
            info = EventInfo(
                container_id=self.container_id,
                process_id=proc.process_id,
                pid=proc.pid or pid,
                exit_code=exit_code,
                exited_at=exited_at,
            )
            return self._exit(_synthetic_exit(info))
        if status is not TaskStatus.UNKNOWN:
            proc.status = status
        return []

    def adopt(self, record: R, *, pid: int, status: TaskStatus) -> int:
        """Take over a task found by Tasks.Get/List; returns the epoch its reconcile must carry.

        A task found stopped stays RUNNING here unless its exit was already published: the
        reconcile that follows reports it, once, like a live exit.
        """
        record.pid = pid
        seen = self._published.get((record.process_id, pid)) if pid else None
        if seen is not None:
            record.exit = seen
            record.status = TaskStatus.STOPPED
        elif status is TaskStatus.STOPPED:
            record.status = TaskStatus.RUNNING
        else:
            record.status = status
        self.init = record
        self.epoch += 1
        return self.epoch

    def reset(self) -> None:
        """The actor crashed: forget the processes (it re-reads them); keep published exits."""
        if self.init is not None:
            self._retire(self.init)
        self.init = None
        self.execs.clear()
        self.epoch += 1

    # -- reconcile --------------------------------------------------------------------------

    def reconcile(
        self,
        epoch: int,
        *,
        found: bool,
        pid: int = 0,
        status: TaskStatus = TaskStatus.UNKNOWN,
        exit_code: int = 0,
        exited_at: dt.datetime | None = None,
        now: dt.datetime,
    ) -> list[Effect]:
        """What Tasks.List/Get said about the task while we may have missed its events."""
        init = self.init
        if epoch != self.epoch or init is None or init.exit is not None:
            return []
        if found and pid and init.pid and pid != init.pid:
            return []  # a different task under the same id; its own events describe it
        if found and status is not TaskStatus.STOPPED:
            if status in (TaskStatus.RUNNING, TaskStatus.PAUSED):
                init.status = status
            return []
        self.reconciled_exits += 1
        effects: list[Effect] = []
        when = exited_at if found else now
        for proc in [*self.execs.values(), init]:
            if proc.exit is not None:
                continue
            known = proc is init and found
            info = EventInfo(
                container_id=self.container_id,
                process_id=proc.process_id,
                pid=proc.pid,
                exit_code=exit_code if known else EXIT_CODE_UNKNOWN,
                exited_at=when,
                error="" if known else (VANISHED if proc is init else ENDED_WITH_TASK),
            )
            effects += self._exit(_synthetic_exit(info))
        return effects

    # -- events -----------------------------------------------------------------------------

    def event(self, event: TaskEvent, *, replayed: bool = False) -> list[Effect]:
        """Apply one containerd event. ``replayed``: already published, only apply state."""
        info = event.info
        if event.type is EventType.EXIT:
            return self._exit(event, replayed=replayed)
        if event.type is EventType.OOM and self.init is not None and self.init.oom_killed:
            # The shim reports OOM on every change of the cgroup's memory.events while its
            # oom_kill count is non-zero (hundreds for one kill): one per task is the news.
            self.duplicate_ooms += 1
            return []
        self._apply_state_event(event.type, info)
        return [] if replayed else [Publish(event)]

    def _apply_state_event(self, event_type: EventType, info: EventInfo) -> None:
        init = self.init
        match event_type:
            case EventType.CREATE | EventType.START:
                running = event_type is EventType.START
                if init is None:
                    stale = (self.container_id, info.pid) in self._published
                    if stale or info.pid in self._retired:
                        return  # a late event of a task we already let go of
                    init = self._new_record(self.container_id, "")
                    self.init = init
                    self.epoch += 1
                    init.pid = info.pid
                    init.status = TaskStatus.RUNNING if running else TaskStatus.CREATED
                elif init.exit is None and (not init.pid or not info.pid or init.pid == info.pid):
                    init.pid = info.pid or init.pid
                    if running:
                        init.status = TaskStatus.RUNNING
            case EventType.EXEC_ADDED | EventType.EXEC_STARTED:
                if init is None or init.exit is not None or not info.process_id:
                    return
                proc = self.execs.get(info.process_id)
                if proc is None:
                    proc = self._new_record(info.process_id, info.process_id)
                    self.execs[info.process_id] = proc
                if proc.exit is None and event_type is EventType.EXEC_STARTED:
                    proc.status = TaskStatus.RUNNING
                    proc.pid = info.pid or proc.pid
            case EventType.PAUSED:
                self.paused()
            case EventType.RESUMED:
                self.resumed()
            case EventType.OOM if init is not None:
                init.oom_killed = True
                if init.exit is not None and not init.exit.oom_killed:
                    # The exit was reported first; what we keep and answer later says it.
                    init.exit = msgspec.structs.replace(init.exit, oom_killed=True)
                    key = (init.process_id, init.pid)
                    if key in self._published:
                        self._published[key] = init.exit
            case _:
                pass

    def _exit(self, event: TaskEvent, *, replayed: bool = False) -> list[Effect]:
        """Every exit, however learned, ends here: recorded and published at most once."""
        info = event.info
        proc = self.process(info.process_id)
        if proc is None:
            key = (info.process_id, info.pid)
            if key in self._published:
                self.duplicate_exits += 1
                return []
            # Not a process we track: publish it now, and remember it so a task adopted
            # later with this pid takes the exit as already reported.
            self._remember(key, ExitStatus(code=info.exit_code, exited_at=info.exited_at))
            return [] if replayed else [Publish(event)]
        if proc.exit is not None:
            self.duplicate_exits += 1
            return []
        if proc.pid and info.pid and proc.pid != info.pid:
            self.stale_exits += 1
            return []
        status = ExitStatus(
            code=info.exit_code, exited_at=info.exited_at, oom_killed=proc.oom_killed
        )
        proc.exit = status
        proc.status = TaskStatus.STOPPED
        self._remember((proc.process_id, proc.pid or info.pid), status)
        effects: list[Effect] = [Wake(proc.process_id, status, synthetic=event.synthetic)]
        if not replayed:
            effects.append(Publish(event))
        return effects

    def _retire(self, proc: R) -> None:
        if proc.pid:
            self._retired[proc.pid] = None
            while len(self._retired) > EXITS_REMEMBERED:
                self._retired.popitem(last=False)

    def _remember(self, key: tuple[str, int], status: ExitStatus) -> None:
        self._published[key] = status
        self._published.move_to_end(key)
        while len(self._published) > EXITS_REMEMBERED:
            self._published.popitem(last=False)

    def _remove(self, proc: R) -> None:
        if proc is self.init:
            self._retire(proc)
            self.init = None
            self.epoch += 1
        else:
            self.execs.pop(proc.process_id, None)


def _synthetic_exit(info: EventInfo) -> TaskEvent:
    """An exit we learned other than from its event (reconcile, refresh, Delete's answer)."""
    return TaskEvent(type=EventType.EXIT, info=info, topic=EXIT_TOPIC, synthetic=True)
