"""The fake daemon's state: processes simulated from their argv, tasks and namespaces.

See the table in :mod:`actors.testing` for how each argv behaves.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from actors.containerd.pb.containerd.services.containers.v1 import containers_pb2
from actors.containerd.pb.containerd.types.task import task_pb2

from ..errors import NotFound

if TYPE_CHECKING:
    from collections.abc import Sequence

# An environment entry (init or exec) that makes the process ignore every signal but SIGKILL.
IGNORE_SIGNALS: Final = "CONTAINERD_ACTORS_FAKE_IGNORE_SIGNALS=1"

_STATUS_CREATED: Final = task_pb2.CREATED
_STATUS_RUNNING: Final = task_pb2.RUNNING
_STATUS_STOPPED: Final = task_pb2.STOPPED
_STATUS_PAUSED: Final = task_pb2.PAUSED


class _ProcessSpec(msgspec.Struct):
    args: list[str] = msgspec.field(default_factory=list)
    env: list[str] = msgspec.field(default_factory=list)
    terminal: bool = False


class _SpecProcess(msgspec.Struct):
    process: _ProcessSpec | None = None


_SPEC_DECODER: Final = msgspec.json.Decoder(_SpecProcess)
_PROCESS_DECODER: Final = msgspec.json.Decoder(_ProcessSpec)
_EXIT_SCRIPT = re.compile(r"\s*exit(?:\s+(\d+))?\s*;?\s*")
_SHELLS: Final = frozenset({"sh", "ash", "bash", "dash"})
# How a process behaves once started: (exit code or None for "runs", delay in seconds).
_NEVER: Final = math.inf


def _program(args: Sequence[str]) -> tuple[int | None, float, bool]:
    """(exit code, seconds until it exits, exits when stdin closes) for an argv."""
    if not args:
        return None, _NEVER, False
    name = os.path.basename(args[0])
    if name == "true":
        return 0, 0.0, False
    if name == "false":
        return 1, 0.0, False
    if name in _SHELLS and len(args) >= 3 and args[1] == "-c":
        found = _EXIT_SCRIPT.fullmatch(args[2])
        if found is not None:
            return int(found.group(1) or 0) % 256, 0.0, False
        if args[2].strip() == "true":
            return 0, 0.0, False
    if name == "sleep" and len(args) == 2:
        try:
            seconds = float(args[1])
        except ValueError:
            return 1, 0.0, False  # busybox sleep rejects it
        if seconds < 0 or math.isnan(seconds):
            return 1, 0.0, False
        return 0, seconds, False
    if name == "cat" and len(args) == 1:
        return 0, _NEVER, True
    return None, _NEVER, False


class _Proc:
    __slots__ = (
        "container_id",
        "delay",
        "exec_id",
        "exit_code",
        "exit_event",
        "exit_on_eof",
        "exit_status",
        "exited_at",
        "ignore_signals",
        "pending_exit",
        "pid",
        "spec",
        "status",
        "stderr",
        "stdin",
        "stdin_closed",
        "stdout",
        "terminal",
    )

    def __init__(
        self,
        container_id: str,
        exec_id: str,
        spec: _ProcessSpec,
        *,
        stdin: str,
        stdout: str,
        stderr: str,
        terminal: bool,
    ) -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.spec = spec
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.terminal = terminal
        self.pid = 0
        self.status: int = _STATUS_CREATED
        self.exit_status = 0
        self.exited_at = (0, 0)
        self.exit_event: trio.Event | None = None
        self.stdin_closed = False
        self.pending_exit: int | None = None
        self.ignore_signals = IGNORE_SIGNALS in spec.env
        self.exit_code, self.delay, self.exit_on_eof = _program(spec.args)

    @property
    def process_id(self) -> str:
        return self.exec_id or self.container_id

    @property
    def alive(self) -> bool:
        return self.status in (_STATUS_RUNNING, _STATUS_PAUSED)

    def to_proto(self) -> task_pb2.Process:
        process = task_pb2.Process(
            container_id=self.container_id,
            id=self.process_id,
            pid=self.pid,
            status=self.status,  # type: ignore[arg-type]
            stdin=self.stdin,
            stdout=self.stdout,
            stderr=self.stderr,
            terminal=self.terminal,
            exit_status=self.exit_status,
        )
        if self.status == _STATUS_STOPPED:
            process.exited_at.seconds, process.exited_at.nanos = self.exited_at
        return process


class _Task:
    __slots__ = ("checkpoints", "execs", "init", "resources", "started_at")

    def __init__(self, init: _Proc) -> None:
        self.init = init
        self.execs: dict[str, _Proc] = {}
        self.resources = b""
        self.checkpoints = 0
        self.started_at = 0.0

    def process(self, exec_id: str) -> _Proc:
        if not exec_id:
            return self.init
        proc = self.execs.get(exec_id)
        if proc is None:
            raise NotFound(f"process {exec_id}: not found")
        return proc


class _Namespace:
    __slots__ = ("containers", "name", "tasks")

    def __init__(self, name: str) -> None:
        self.name = name
        self.containers: dict[str, containers_pb2.Container] = {}
        self.tasks: dict[str, _Task] = {}
