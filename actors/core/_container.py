"""The container actor: one Trio task per container, owning all of its state.

Every operation on a container goes through its mailbox and runs here, one at a time, so a
delete can never race a start and state is never re-read by id: the actor keeps what
containerd told it (pids from Create/Start, exits from events). Mutating steps run in the
actor's scope, not the caller's, so a caller that gives up never leaves an operation half
done. Waiting for an exit parks the reply channel in the actor's state and costs no RPC.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import os
import shutil
import signal as signal_module
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, assert_never, cast

import msgspec
import outcome
import trio

from actors.containerd.pb.containerd.services.containers.v1 import containers_pb2
from actors.containerd.pb.containerd.services.tasks.v1 import tasks_pb2
from actors.containerd.pb.containerd.types.task import task_pb2

from ..containerd._mounts import Mount
from ..containerd._typeurls import RUNC_OPTIONS_TYPE_URL as RUNC_OPTIONS_TYPE_URL
from ..errors import (
    ActorCrashed,
    AlreadyExists,
    ClientClosed,
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unknown,
)
from . import _commands as cmd
from ._delivery import Backend as Backend  # re-exported: part of this API
from ._delivery import BackendDelivery
from ._mailbox import Mailbox, MailboxStatistics
from ._process_state import (
    Effect,
    Forget,
    ProcessMachine,
    ProcessRecord,
    Publish,
    Wake,
    status_from_wire,
)
from ._process_state import ProcessState as ProcessState  # re-exported: part of this API
from ._process_state import TaskStatus as TaskStatus
from ._restart import (
    MANUALLY_STOPPED_LABEL,
    RESTART_COUNT_LABEL,
    backoff,
    count_from_labels,
    policy_from_labels,
    should_restart,
)
from .events import (
    INIT_PROCESS_NAME,
    ExitStatus,
    TaskEvent,
    timestamp_to_datetime,
)
from .stdio import DirectIO, FifoSet

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..containerd._interface import ContainerdRemote

log = logging.getLogger("containerd_actors.container")

SERVE_BATCH = 64

# A reply channel carries the outcome of any command; call_actor, which opened it for a
# Command[R], narrows what comes back to R.
Reply = trio.MemorySendChannel[outcome.Outcome[object]]
# Any: the mailbox holds commands of every reply type (Command is invariant in it).
MailboxItem = tuple[cmd.Command[Any], Reply | None]
R = TypeVar("R")


class RestartStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A container's restart policy as its actor applies it.

    Attributes:
        policy: docker's syntax (``no``, ``always``, ``on-failure:3``, ...).
        count: restarts so far (kept across supervisors in a label).
        pending: a restart is scheduled (docker's ``Restarting``).
        manually_stopped: the user stopped or killed it, so it is not restarted.
    """

    policy: str
    count: int
    pending: bool
    manually_stopped: bool


class ActorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One container actor: inbox pressure and what it has handled."""

    container_id: str
    mailbox: MailboxStatistics
    commands_handled: int
    events_handled: int
    duplicate_exits: int
    stale_exits: int
    reconciled_exits: int
    overflow_resyncs: int
    waiters: int
    processes: int
    backend_queue: int


@dataclass(eq=False, kw_only=True)
class _Process(ProcessRecord):
    """The machine's record of a process plus what only the shell holds: stdio, waiters."""

    terminal: bool = False
    io: DirectIO | None = None
    waiters: list[Reply] = field(default_factory=list)
    close_io_after_start: bool = False


class ContainerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the actor keeps from Containers.Create / Containers.List."""

    id: str
    labels: dict[str, str]
    runtime: str
    spec: bytes
    terminal: bool
    runtime_options: bytes = b""
    # An image-based container: its snapshot, and the snapshot's mounts for Tasks.Create.
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    rootfs: tuple[Mount, ...] = ()


def _validate_signal(value: object) -> int:
    if isinstance(value, signal_module.Signals):
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
        raise InvalidArgument(f"invalid signal {value!r}: expected 1..64", local=True)
    return value


class ContainerActor:
    """Owns one container; started in the client's nursery with ``nursery.start``."""

    def __init__(
        self,
        remote: ContainerdRemote,
        record: ContainerRecord,
        *,
        io_root: str,
        delivery: BackendDelivery | None,
        on_event: Callable[[TaskEvent], None] | None = None,
        on_resync_failed: Callable[[], None] | None = None,
        mailbox_capacity: int = 64,
        event_capacity: int = 1024,
    ) -> None:
        self.container_id = record.id
        self.record = record
        self._remote = remote
        self._io_dir = os.path.join(io_root, record.id)
        self._delivery = delivery
        self._on_event = on_event
        self._on_resync_failed = on_resync_failed
        self.mailbox: Mailbox[MailboxItem] = Mailbox(
            command_capacity=mailbox_capacity, event_capacity=event_capacity
        )
        # Every process state transition happens in the sans-IO machine; this class is its
        # shell (RPCs, stdio, waiters, delivery of what the machine says to publish).
        self._machine: ProcessMachine[_Process] = ProcessMachine(record.id, self._new_record)
        self._nursery: trio.Nursery | None = None
        self._deleted = False
        self._gone_elsewhere = False
        self._commands_handled = 0
        self._events_handled = 0
        self._overflow_resyncs = 0
        # Docker's restart policy, honoured here; see actors.core._restart.
        self._restart_policy = policy_from_labels(record.labels)
        self._restart_count = count_from_labels(record.labels)
        self._manually_stopped = record.labels.get(MANUALLY_STOPPED_LABEL) == "true"
        self._restart_cancelled = False  # a user kill/stop during this actor's life
        self._restart_pending = False
        self._restart_with = cmd.CreateTask(start=True)

    def _new_record(self, process_id: str, exec_id: str) -> _Process:
        return _Process(process_id=process_id, exec_id=exec_id)

    @property
    def _init(self) -> _Process | None:
        return self._machine.init

    @property
    def _execs(self) -> dict[str, _Process]:
        return self._machine.execs

    @property
    def task_epoch(self) -> int:
        """Moves whenever the task changes identity: a Tasks.List taken before the change
        is never applied to the new task."""
        return self._machine.epoch

    # -- lifecycle -----------------------------------------------------------------------

    def statistics(self) -> ActorStatistics:
        procs = [p for p in (self._init, *self._execs.values()) if p is not None]
        return ActorStatistics(
            container_id=self.container_id,
            mailbox=self.mailbox.statistics(),
            commands_handled=self._commands_handled,
            events_handled=self._events_handled,
            duplicate_exits=self._machine.duplicate_exits,
            stale_exits=self._machine.stale_exits,
            reconciled_exits=self._machine.reconciled_exits,
            overflow_resyncs=self._overflow_resyncs,
            waiters=sum(len(p.waiters) for p in procs),
            processes=len(procs),
            backend_queue=(
                self._delivery.queued_for(self.container_id) if self._delivery is not None else 0
            ),
        )

    @property
    def deleted(self) -> bool:
        return self._deleted

    def published_exits(self) -> list[tuple[str, int]]:
        """(process id, pid) of the exits this actor reported, for the client to remember."""
        return self._machine.published_keys()

    def io_of(self, exec_id: str) -> DirectIO | None:
        """The open stdio of a known process (a read of actor state; no RPC)."""
        proc = self._init if not exec_id else self._execs.get(exec_id)
        return proc.io if proc is not None else None

    def restart_status(self) -> RestartStatus:
        return RestartStatus(
            policy=str(self._restart_policy),
            count=self._restart_count,
            pending=self._restart_pending,
            manually_stopped=self._manually_stopped or self._restart_cancelled,
        )

    def snapshot(self) -> ProcessState | None:
        """The init process as the actor knows it, or None without a task."""
        return self._init.snapshot(self.container_id) if self._init is not None else None

    def adopt_task(self, process: task_pb2.Process, *, attach: bool = True) -> None:
        """Take over a task found at restore time (from Tasks.List), re-opening its FIFOs.

        A task that already stopped keeps ``exit`` unset here; the Reconcile that follows
        reports its exit once, through the same path as a live exit event.
        """
        init = _Process(process_id=self.container_id, exec_id="", terminal=bool(process.terminal))
        epoch = self._machine.adopt(
            init, pid=int(process.pid), status=status_from_wire(int(process.status))
        )
        if attach:
            init.io = self._reopen_io(process)
        self.mailbox.post_event((reconcile_from_process(epoch, process), None))

    def _reopen_io(self, process: task_pb2.Process) -> DirectIO | None:
        """Open our ends of the FIFOs containerd reports for a task (None if it has none)."""
        if status_from_wire(int(process.status)) is TaskStatus.UNKNOWN or not process.stdout:
            return None  # the shim is unreachable: no paths to re-open
        fifos = FifoSet(
            directory=os.path.dirname(process.stdout),
            stdin=process.stdin,
            stdout=process.stdout,
            stderr=process.stderr,
            terminal=bool(process.terminal),
        )
        try:
            return DirectIO.open(fifos, reopened=True)
        except OSError as exc:
            log.warning("cannot re-open stdio of %s: %s", self.container_id, exc)
            return None

    async def run(
        self,
        *,
        load_state: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the mailbox until the container is deleted or the actor is cancelled.

        With ``load_state`` (a restart after a crash) the task is re-read first (1 RPC), so
        the actor reports ready only with containerd's current state loaded.
        """
        if load_state and self._init is None:
            try:
                self.adopt_task(await self._remote.tasks_get(self.container_id))
            except NotFound:
                pass
            await self._reattach_stdio()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for proc in self._processes():
                    self._start_pumps(proc)
                task_status.started()
                await self._serve()
                nursery.cancel_scope.cancel()
        except Exception:
            self._shutdown(final=False)
            raise
        except BaseException:
            self._shutdown(final=True)
            raise
        self._shutdown(final=True)

    async def _reattach_stdio(self) -> None:
        """After a crash: whoever consumed the output before (the control plane's log)
        consumes the re-opened FIFOs again at once, as nobody else would drain them."""
        callback = self._restart_with.attach_stdio
        init = self._init
        if callback is not None and init is not None and init.io is not None:
            await _hand_over(callback, init.io)

    def _shutdown(self, *, final: bool) -> None:
        """Tell every pending caller, close our fds; a crashed actor forgets its processes.

        Not ``final`` means the supervisor may run this actor again: the mailbox stays
        open, and the restarted run re-reads the task from containerd.
        """
        error: Exception = (
            NotFound(f"container {self.container_id} was deleted", local=True)
            if self._deleted
            else ActorCrashed(f"the actor of container {self.container_id} stopped")
        )
        left = self.mailbox.close() if final else self.mailbox.drain()
        for _command, reply in left:
            if reply is not None:
                _send_reply(reply, outcome.Error(error))
        for proc in self._processes():
            for waiter in proc.waiters:
                waiter.close()
            proc.waiters.clear()
            if proc.io is not None:
                # Stop supervising means closing our fds, never removing live FIFOs.
                proc.io.close(unlink=self._deleted)
        if not final:
            self._machine.reset()

    def deleted_elsewhere(self) -> None:
        """Another client removed the record: end this actor at its next free moment.

        The flag is read before every receive, so a full inbox (the nudge below dropped)
        still ends it; pending callers then get NotFound, as after our own delete.
        """
        self._gone_elsewhere = True
        self.mailbox.post_event((cmd.ContainerGone(), None))

    def close_mailbox(self) -> None:
        """Refuse further commands (supervision gave up on this actor)."""
        for _command, reply in self.mailbox.close():
            if reply is not None:
                _send_reply(reply, outcome.Error(ActorCrashed("supervision stopped")))

    def _processes(self) -> list[_Process]:
        return [p for p in (self._init, *self._execs.values()) if p is not None]

    async def _serve(self) -> None:
        while True:
            if self._gone_elsewhere:
                self._deleted = True
                return
            if self.mailbox.needs_resync and not self.mailbox.statistics().depth:
                # Events were dropped while we were busy; now that we are free, one Tasks.Get
                # tells us what they said (a missed exit is then reported once).
                await self._resync_after_overflow()
            try:
                item = await self.mailbox.receive()
            except trio.EndOfChannel:
                return
            # Items already queued are taken without a scheduler round trip each, up to a
            # bound so a busy container cannot starve its neighbours. Only take an item
            # that will be served in this batch.
            for served in range(1, SERVE_BATCH + 1):
                if await self._serve_one(*item):
                    return
                if served == SERVE_BATCH:
                    break
                try:
                    item = self.mailbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break

    async def _serve_one(self, command: cmd.Command[Any], reply: Reply | None) -> bool:
        """Handle one mailbox item; True when the actor is done (container deleted)."""
        if isinstance(command, cmd.DeliverEvent):
            self._events_handled += 1
            self._perform(self._machine.event(command.event, replayed=command.replayed))
            return False
        if isinstance(command, cmd.Reconcile):
            self._reconcile(command)
            return False
        if isinstance(command, cmd.ContainerGone):
            self._deleted = True
            return True
        self._commands_handled += 1
        if isinstance(command, cmd.Wait):
            self._wait(command, reply)
            return False
        try:
            result: outcome.Outcome[object] = outcome.Value(await self._handle(command))
        except Exception as exc:
            result = outcome.Error(exc)
        if reply is not None:
            _send_reply(reply, result)
        return self._deleted

    # -- command handlers ----------------------------------------------------------------

    async def _handle(self, command: cmd.Command[Any]) -> object:
        # Each reply goes through command.reply(), so mypy checks it is the command's type,
        # and assert_never below checks that every command of the union has its case.
        if not isinstance(command, cmd.ActorCommand):
            raise InvalidArgument(f"unexpected command {command!r}", local=True)
        match command:
            case cmd.CreateTask():
                await self._user_started()
                self._restart_with = cmd.CreateTask(
                    start=True, with_stdin=command.with_stdin, attach_stdio=command.attach_stdio
                )
                return command.reply(await self._create_task(command))
            case cmd.AutoRestart(epoch=epoch):
                await self._auto_restart(epoch)
                return command.reply(None)
            case cmd.StartProcess(exec_id=exec_id):
                return command.reply(await self._start_process(exec_id))
            case cmd.CreateExec():
                return command.reply(await self._create_exec(command))
            case cmd.Kill(exec_id=exec_id, signal=sig, all=all_):
                await self._kill(exec_id, sig, all_)
                return command.reply(None)
            case cmd.CloseStdin(exec_id=exec_id):
                await self._close_stdin(exec_id)
                return command.reply(None)
            case cmd.Resize(exec_id=exec_id, width=width, height=height):
                await self._resize(exec_id, width, height)
                return command.reply(None)
            case cmd.Pause():
                self._require_live_init()
                await self._remote.tasks_pause(self.container_id)
                self._machine.paused()  # what containerd acknowledged, before its event
                return command.reply(None)
            case cmd.Resume():
                self._require_live_init()
                await self._remote.tasks_resume(self.container_id)
                self._machine.resumed()
                return command.reply(None)
            case cmd.Pids():
                self._require_live_init()
                return command.reply(await self._remote.tasks_list_pids(self.container_id))
            case cmd.Metrics():
                self._require_init()
                return command.reply(await self._remote.tasks_metrics([f"id=={self.container_id}"]))
            case cmd.Update(resources=resources):
                await self._update(resources)
                return command.reply(None)
            case cmd.Checkpoint(directory=directory, exit=exit_):
                await self._checkpoint(directory, exit_)
                return command.reply(None)
            case cmd.Status(exec_id=exec_id, refresh=refresh):
                return command.reply(await self._status(exec_id, refresh))
            case cmd.LoadTask(attach_stdio=callback, attach=attach):
                if callback is not None and self._restart_with.attach_stdio is None:
                    # A supervisor that re-attached (to drain output) wants restarts too.
                    self._restart_with = cmd.CreateTask(start=True, attach_stdio=callback)
                return command.reply(await self._load_task(callback, attach))
            case cmd.DeleteProcess(exec_id=exec_id):
                return command.reply(await self._delete_process(exec_id))
            case cmd.DeleteContainer():
                await self._delete_container()
                return command.reply(None)
            case cmd.Wait() | cmd.DeliverEvent() | cmd.Reconcile() | cmd.ContainerGone():
                # Served by _serve_one without a handler (they wait or apply, never RPC).
                raise InvalidArgument(f"unexpected command {command!r}", local=True)
            case _:
                assert_never(command)

    def _require_init(self) -> _Process:
        if self._init is None:
            raise NotFound(f"container {self.container_id} has no task", local=True)
        return self._init

    def _require_live_init(self) -> _Process:
        init = self._require_init()
        if init.exit is not None:
            raise FailedPrecondition(
                f"task {self.container_id} is not running (exited {init.exit.code})", local=True
            )
        return init

    def _process(self, exec_id: str) -> _Process:
        if not exec_id:
            return self._require_init()
        proc = self._execs.get(exec_id)
        if proc is None:
            raise NotFound(
                f"process {exec_id!r} not found in container {self.container_id}", local=True
            )
        return proc

    def _start_pumps(self, proc: _Process) -> None:
        if proc.io is None or self._nursery is None:
            return
        for pipe in proc.io.pipes():
            self._nursery.start_soon(pipe.pump)

    async def _open_io(
        self, process_id: str, *, stdin: bool, terminal: bool, callback: cmd.StdioCallback | None
    ) -> DirectIO:
        fifos = FifoSet.for_process(self._io_dir, process_id, stdin=stdin, terminal=terminal)
        io = DirectIO.open(fifos)
        if callback is not None:
            try:
                await _hand_over(callback, io)
            except BaseException:
                io.close()
                raise
        return io

    async def _create_task(self, command: cmd.CreateTask) -> cmd.Started:
        if self._init is not None:
            raise AlreadyExists(
                f"container {self.container_id} already has a task; delete it first", local=True
            )
        terminal = self.record.terminal
        if self.record.snapshot_key and not self.record.rootfs:
            await self._load_rootfs()
        io = await self._open_io(
            self.container_id,
            stdin=command.with_stdin,
            terminal=terminal,
            callback=command.attach_stdio,
        )
        proc = _Process(process_id=self.container_id, exec_id="", terminal=terminal, io=io)
        self._start_pumps(proc)
        try:
            pid = await self._remote.tasks_create(
                self.container_id,
                stdin=io.fifos.stdin,
                stdout=io.fifos.stdout,
                stderr=io.fifos.stderr,
                terminal=terminal,
                rootfs=self.record.rootfs,
                checkpoint_path=command.checkpoint_dir,
                runtime_options=self.record.runtime_options,
            )
        except BaseException:
            io.close()
            raise
        self._machine.created(proc, pid)
        if command.start:
            # In the same command, so a caller that gives up cannot leave it half done.
            return cmd.Started(pid=await self._start_process(""), io=io)
        return cmd.Started(pid=proc.pid, io=io)

    async def _start_process(self, exec_id: str) -> int:
        proc = self._process(exec_id)
        if proc.status is not TaskStatus.CREATED or proc.exit is not None:
            raise FailedPrecondition(
                f"process {proc.process_id} was already started ({proc.status})", local=True
            )
        try:
            pid = await self._remote.tasks_start(self.container_id, exec_id)
        except ContainerdError:
            await self._cleanup_failed_start(proc)
            raise
        self._machine.started(proc.process_id, pid)
        if proc.close_io_after_start:
            proc.close_io_after_start = False
            await self._remote.tasks_close_io(self.container_id, exec_id=exec_id)
        return pid

    async def _cleanup_failed_start(self, proc: _Process) -> None:
        # A created process cannot be deleted until it is dead; do it here, in our scope.
        with trio.move_on_after(10, shield=True):
            try:
                if proc.exec_id:
                    await self._remote.tasks_delete_process(self.container_id, proc.exec_id)
                else:
                    await self._remote.tasks_kill(
                        self.container_id, signal_module.SIGKILL, all=True
                    )
                    await self._remote.tasks_delete(self.container_id)
            except ContainerdError as exc:
                log.warning("cleanup after failed start of %s: %s", proc.process_id, exc)
        if proc.io is not None:
            proc.io.close()
        self._machine.start_failed(proc.process_id)
        for waiter in proc.waiters:
            _send_reply(waiter, outcome.Error(FailedPrecondition("process failed to start")))
        proc.waiters.clear()

    async def _create_exec(self, command: cmd.CreateExec) -> cmd.Started:
        init = self._require_live_init()
        if command.exec_id == INIT_PROCESS_NAME:
            raise InvalidArgument(
                f"exec id {INIT_PROCESS_NAME!r} is reserved: it names the init process",
                local=True,
            )
        if command.exec_id in self._execs or command.exec_id == self.container_id:
            raise AlreadyExists(
                f"exec id {command.exec_id!r} already used in container {self.container_id}",
                local=True,
            )
        del init
        io = await self._open_io(
            command.exec_id,
            stdin=command.with_stdin,
            terminal=command.terminal,
            callback=command.attach_stdio,
        )
        proc = _Process(
            process_id=command.exec_id, exec_id=command.exec_id, terminal=command.terminal, io=io
        )
        self._start_pumps(proc)
        try:
            await self._remote.tasks_exec(
                self.container_id,
                command.exec_id,
                spec=command.process_spec,
                stdin=io.fifos.stdin,
                stdout=io.fifos.stdout,
                stderr=io.fifos.stderr,
                terminal=command.terminal,
            )
        except Unknown as exc:
            io.close()
            if "stopped state" in exc.message:
                # The task died before its exit event reached us; say so in our terms.
                raise FailedPrecondition(
                    f"task {self.container_id} is not running: {exc.message}"
                ) from exc
            raise
        except BaseException:
            io.close()
            raise
        self._machine.exec_added(proc)
        if command.start:
            # In the same command, so a caller that gives up cannot leave it half done.
            return cmd.Started(pid=await self._start_process(command.exec_id), io=io)
        return cmd.Started(pid=0, io=io)

    async def _kill(self, exec_id: str, sig: int, all_: bool) -> None:
        proc = self._process(exec_id)
        if not exec_id:
            await self._user_stopped()
        if proc.exit is not None and not all_:
            raise NotFound(
                f"process {proc.process_id} already finished (exit {proc.exit.code})", local=True
            )
        signal_number = _validate_signal(sig)
        await self._remote.tasks_kill(self.container_id, signal_number, exec_id=exec_id, all=all_)
        self._machine.killed(proc.process_id, signal_number, all=all_)

    def _wait(self, command: cmd.Wait, reply: Reply | None) -> None:
        if reply is None:
            return
        try:
            proc = self._process(command.exec_id)
        except ContainerdError as exc:
            _send_reply(reply, outcome.Error(exc))
            return
        if proc.exit is not None:
            _send_reply(reply, outcome.Value(proc.exit))
        else:
            proc.waiters.append(reply)

    async def _close_stdin(self, exec_id: str) -> None:
        proc = self._process(exec_id)
        if proc.io is None or not proc.io.close_stdin_writer():
            return
        if proc.exit is not None:
            return
        if proc.exec_id and proc.status is TaskStatus.CREATED:
            # An exec's stdin FIFO is opened by the shim only at Start.
            proc.close_io_after_start = True
            return
        await self._remote.tasks_close_io(self.container_id, exec_id=exec_id)

    async def _resize(self, exec_id: str, width: int, height: int) -> None:
        proc = self._process(exec_id)
        if not proc.terminal:
            raise FailedPrecondition(
                f"process {proc.process_id} has no terminal to resize", local=True
            )
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or not 0 < value < 65536:
                raise InvalidArgument(f"invalid terminal {name} {value!r}", local=True)
        await self._remote.tasks_resize_pty(self.container_id, width, height, exec_id=exec_id)

    async def _update(self, resources: bytes) -> None:
        self._require_live_init()
        await self._remote.tasks_update(self.container_id, resources)

    async def _checkpoint(self, directory: str, exit_: bool) -> None:
        self._require_live_init()
        if not os.path.isabs(directory):
            raise InvalidArgument(
                f"checkpoint directory must be absolute: {directory!r}", local=True
            )
        problem = await criu_problem()
        if problem is not None:
            raise FailedPrecondition(f"cannot checkpoint on this host: {problem}", local=True)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        await self._remote.tasks_checkpoint(self.container_id, image_path=directory, exit=exit_)

    async def _status(self, exec_id: str, refresh: bool) -> ProcessState:
        proc = self._process(exec_id)
        if refresh:
            process = await self._remote.tasks_get(self.container_id, exec_id)
            # A stop seen here is an exit like any other: published once, waiters woken.
            self._perform(
                self._machine.refreshed(
                    proc.process_id,
                    status=status_from_wire(int(process.status)),
                    pid=int(process.pid),
                    exit_code=int(process.exit_status),
                    exited_at=timestamp_to_datetime(
                        int(process.exited_at.seconds), int(process.exited_at.nanos)
                    ),
                )
            )
        return proc.snapshot(self.container_id)

    async def _load_task(self, callback: cmd.StdioCallback | None, attach: bool) -> cmd.Loaded:
        init = self._init
        if init is not None and (init.io is not None or not attach):
            if attach and callback is not None and init.io is not None:
                await _hand_over(callback, init.io)
            return cmd.Loaded(
                state=init.snapshot(self.container_id), io=init.io if attach else None
            )
        # Unknown task, or one loaded earlier without stdio: Tasks.Get names its FIFOs.
        process = await self._remote.tasks_get(self.container_id)
        if init is not None and init.pid == int(process.pid):
            init.io = self._reopen_io(process)  # the same task: keep its state, add stdio
        else:
            for gone in self._processes():
                self._forget(gone, "was replaced by another task")
            self._machine.reset()
            self.adopt_task(process, attach=attach)
            init = self._require_init()
        self._start_pumps(init)
        if attach and callback is not None and init.io is not None:
            await _hand_over(callback, init.io)
        return cmd.Loaded(state=init.snapshot(self.container_id), io=init.io if attach else None)

    async def _delete_process(self, exec_id: str) -> ExitStatus:
        proc = self._process(exec_id)
        if proc.exit is None and proc.status is not TaskStatus.STOPPED:
            raise FailedPrecondition(
                f"process {proc.process_id} must be stopped before deletion ({proc.status})",
                local=True,
            )
        try:
            if exec_id:
                response = await self._remote.tasks_delete_process(self.container_id, exec_id)
            else:
                response = await self._remote.tasks_delete(self.container_id)
        except NotFound:
            if proc.exit is None:
                raise
            # containerd already cleaned up (e.g. after its shim died): it is gone either way.
            response = tasks_pb2.DeleteResponse(exit_status=proc.exit.code)
        # The exit event's status wins over Delete's, as in moby; an exit first learned from
        # Delete's answer is published like any other.
        status, effects = self._machine.deleted(
            proc.process_id,
            int(response.exit_status),
            timestamp_to_datetime(int(response.exited_at.seconds), int(response.exited_at.nanos)),
        )
        self._perform(effects)
        return status

    async def _delete_container(self) -> None:
        if self._init is not None:
            raise FailedPrecondition(
                f"container {self.container_id} still has a task ({self._init.status}); "
                "delete the task first",
                local=True,
            )
        await self._remote.containers_delete(self.container_id)
        self._deleted = True
        if self.record.snapshot_key:
            await self._remove_snapshot()
        try:
            os.rmdir(self._io_dir)  # the FIFOs went with their processes; usually empty
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self._io_dir, ignore_errors=True)

    async def _load_rootfs(self) -> None:
        # A container adopted from containerd knows its snapshot but not its mounts (one
        # RPC, once; the mounts of a snapshot do not change).
        from ..images._content import snapshot_mounts

        record = self.record
        mounts = await snapshot_mounts(self._remote, record.snapshotter, record.snapshot_key)
        self.record = msgspec.structs.replace(record, rootfs=tuple(mounts))

    async def _remove_snapshot(self) -> None:
        # The record was what kept the snapshot from containerd's GC; remove it now rather
        # than at the next collection. A failure here is logged: the GC takes it anyway.
        from ..images._content import remove_snapshot

        record = self.record
        try:
            await remove_snapshot(self._remote, record.snapshotter, record.snapshot_key)
        except ContainerdError as exc:
            log.warning("container %s: snapshot not removed: %s", self.container_id, exc)

    # -- events ---------------------------------------------------------------------------

    def _reconcile(self, command: cmd.Reconcile) -> None:
        self._perform(
            self._machine.reconcile(
                command.epoch,
                found=command.found,
                pid=command.pid,
                status=status_from_wire(command.status),
                exit_code=command.exit_status,
                exited_at=timestamp_to_datetime(command.exited_at_seconds, command.exited_at_nanos),
                now=dt.datetime.now(dt.UTC),
            )
        )

    async def _resync_after_overflow(self) -> None:
        """One Tasks.Get for the events the full inbox dropped (the flag is cleared first)."""
        self.mailbox.needs_resync = False
        self._overflow_resyncs += 1
        epoch = self._machine.epoch
        if self._init is None or self._init.exit is not None:
            return  # nothing we could have missed an exit of
        try:
            process = await self._remote.tasks_get(self.container_id)
        except NotFound:
            process = None
        except ContainerdError as exc:
            # containerd is unreachable: the namespace-wide Tasks.List resync retries for us.
            log.warning("resync of %s after overflow failed: %s", self.container_id, exc)
            if self._on_resync_failed is not None:
                self._on_resync_failed()
            return
        self._reconcile(reconcile_from_process(epoch, process))

    def _forget(self, proc: _Process, why: str) -> None:
        """Drop a process we stop tracking: close its stdio and answer its waiters."""
        if proc.io is not None:
            proc.io.close()
        for waiter in proc.waiters:
            result: outcome.Outcome[object] = (
                outcome.Value(proc.exit)
                if proc.exit is not None
                else outcome.Error(
                    NotFound(
                        f"process {proc.process_id} {why}; its exit status is unknown",
                        local=True,
                    )
                )
            )
            _send_reply(waiter, result)
        proc.waiters.clear()

    def _perform(self, effects: list[Effect]) -> None:
        """Carry out what the machine decided, in its order."""
        for effect in effects:
            if isinstance(effect, Publish):
                self._publish(effect.event)
            elif isinstance(effect, Wake):
                proc = self._machine.process(effect.process_id)
                if proc is not None:
                    if proc.io is not None:
                        for pipe in proc.io.pipes():
                            pipe.mark_exited()  # so a re-opened FIFO still reaches EOF
                    for waiter in proc.waiters:
                        _send_reply(waiter, outcome.Value(effect.exit))
                    proc.waiters.clear()
                if effect.process_id == self.container_id:
                    # The init's exit, recorded once however learned: the restart policy's cue.
                    self._after_init_exit(effect.exit.code, restoring=effect.synthetic)
            elif isinstance(effect, Forget) and isinstance(effect.record, _Process):
                self._forget(effect.record, effect.reason)

    def _publish(self, event: TaskEvent) -> None:
        # The Backend's queue belongs to the client: it outlives this actor, so a
        # process_event that deletes this container is not cancelled when we end.
        if self._delivery is not None:
            self._delivery.submit(self.container_id, event.type, event.info)
        if self._on_event is not None:
            self._on_event(event)

    # -- restart policy ----------------------------------------------------------------

    def _after_init_exit(self, exit_code: int, *, restoring: bool) -> None:
        if self._restart_cancelled or self._restart_pending or self._nursery is None:
            return
        if not should_restart(
            self._restart_policy,
            exit_code,
            self._restart_count,
            manually_stopped=self._manually_stopped,
            restoring=restoring,
        ):
            return
        self._restart_pending = True
        self._nursery.start_soon(self._restart_later, self.task_epoch, backoff(self._restart_count))

    async def _restart_later(self, epoch: int, delay: float) -> None:
        await trio.sleep(delay)
        if not self.mailbox.post_event((cmd.AutoRestart(epoch=epoch), None)):
            self._restart_pending = False

    async def _auto_restart(self, epoch: int) -> None:
        """Tasks.Delete, Containers.Update (the count), Tasks.Create, Tasks.Start."""
        self._restart_pending = False
        init = self._init
        if epoch != self.task_epoch or self._restart_cancelled or init is None or init.exit is None:
            return  # the user stopped, deleted or started it meanwhile
        try:
            await self._delete_process("")
            self._restart_count += 1
            await self._set_labels({RESTART_COUNT_LABEL: str(self._restart_count)})
            # The same stdio as the user's start: whoever consumed its output (the control
            # plane's log, say) consumes the restarted task's too.
            await self._create_task(self._restart_with)
        except ContainerdError as exc:
            log.warning("restarting %s failed: %s", self.container_id, exc)

    async def _user_stopped(self) -> None:
        if self._restart_policy.mode == "no":
            return
        self._restart_cancelled = True
        if not self._manually_stopped:
            await self._set_labels({MANUALLY_STOPPED_LABEL: "true"})
            self._manually_stopped = True

    async def _user_started(self) -> None:
        self._restart_cancelled = False
        if self._manually_stopped:
            await self._set_labels({MANUALLY_STOPPED_LABEL: ""})
            self._manually_stopped = False

    async def _set_labels(self, changes: dict[str, str]) -> None:
        """Containers.Update of internal labels (an empty value removes one)."""
        container = containers_pb2.Container(id=self.container_id, labels=changes)
        updated = await self._remote.containers_update(
            container, [f"labels.{key}" for key in changes]
        )
        self.record = msgspec.structs.replace(self.record, labels=dict(updated.labels))


_criu_verdict: list[str | None] = []


async def criu_problem() -> str | None:
    """Why CRIU cannot checkpoint here (None when ``criu check`` passes); asked once."""
    if _criu_verdict:
        return _criu_verdict[0]
    verdict: str | None
    if shutil.which("criu") is None:
        verdict = "criu is not installed (apt-get install criu)"
    else:
        result = await trio.run_process(
            ["criu", "check"], capture_stdout=True, capture_stderr=True, check=False
        )
        if result.returncode == 0:
            verdict = None
        else:
            lines = (result.stderr + result.stdout).decode(errors="replace").splitlines()
            errors = [line for line in lines if "Error" in line] or lines or ["unknown error"]
            verdict = f"`criu check` failed: {errors[min(1, len(errors) - 1)].strip()}"
    _criu_verdict.append(verdict)
    return verdict


def reconcile_from_process(epoch: int, process: task_pb2.Process | None) -> cmd.Reconcile:
    """A Reconcile item from a containerd Process (None: containerd has no such task)."""
    if process is None:
        return cmd.Reconcile(epoch=epoch, found=False)
    return cmd.Reconcile(
        epoch=epoch,
        found=True,
        pid=int(process.pid),
        status=int(process.status),
        exit_status=int(process.exit_status),
        exited_at_seconds=int(process.exited_at.seconds),
        exited_at_nanos=int(process.exited_at.nanos),
    )


async def _hand_over(callback: cmd.StdioCallback, io: DirectIO) -> None:
    """Give a process's stdio to the caller's callback (plain or async)."""
    result = callback(io)
    if inspect.isawaitable(result):
        await result


def _send_reply(reply: Reply, result: outcome.Outcome[object]) -> None:
    with reply:
        try:
            reply.send_nowait(result)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass  # the caller gave up waiting; the operation itself still happened


async def call_actor(actor: ContainerActor, command: cmd.Command[R]) -> R:
    """Send one command and wait for its reply (the one-shot channel pattern)."""
    reply_send, reply_receive = trio.open_memory_channel[outcome.Outcome[object]](1)
    with reply_receive:
        try:
            await actor.mailbox.send_command((command, reply_send))
        except trio.ClosedResourceError:
            reply_send.close()
            if actor.deleted:
                raise NotFound(f"container {actor.container_id} was deleted", local=True) from None
            raise ClientClosed(
                f"the actor of container {actor.container_id} is no longer running"
            ) from None
        try:
            result = await reply_receive.receive()
        except trio.EndOfChannel:
            raise ActorCrashed(
                f"the actor of container {actor.container_id} stopped before replying; "
                "the container is untouched and the call can be retried"
            ) from None
    # The actor answered this Command[R] through command.reply(), checked to be an R.
    return cast("R", result.unwrap())
