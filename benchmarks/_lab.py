"""The benchmarks' own containerd: a private daemon in a temp dir, a busybox rootfs, and the
clean-up that leaves nothing behind (containers, tasks, shims, FIFOs, cgroups), even after
Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

import trio

from actors.containerd._bridge import AsyncioBridge
from actors.containerd._embedded import PrivateContainerd, build_busybox_rootfs, missing_host_tools
from actors.containerd._remote import Remote
from actors.containerd.pb.containerd.types.task import task_pb2
from actors.errors import ContainerdError


def host_problem() -> str | None:
    """Why real-daemon benchmarks cannot run here (None when they can)."""
    problems = list(missing_host_tools())
    if shutil.which("ctr") is None:
        problems.append("ctr")
    if os.geteuid() != 0:
        problems.append("root privileges")
    return "missing " + ", ".join(problems) if problems else None


class Lab:
    """Owns the temp dir, the private containerd and every namespace the run used."""

    def __init__(self) -> None:
        # Short path: unix socket paths are limited to 108 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="cab-", dir="/tmp"))
        self.prefix = f"cab{os.getpid()}"
        self.daemon: PrivateContainerd | None = None
        self.rootfs: Path | None = None
        self.namespaces: list[str] = []

    @property
    def address(self) -> str:
        assert self.daemon is not None
        return self.daemon.address

    @property
    def daemon_pid(self) -> int | None:
        return self.daemon.pid if self.daemon is not None else None

    def namespace(self, name: str) -> str:
        namespace = f"{self.prefix}-{name}"
        if namespace not in self.namespaces:
            self.namespaces.append(namespace)
        return namespace

    def state_dir(self, name: str) -> str:
        return str(self.base / "io" / name)

    def fifo_dir(self) -> str:
        path = self.base / "ctr-fifo"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def start(self) -> None:
        self.daemon = PrivateContainerd(self.base / "containerd")
        self.daemon.start()
        self.rootfs = build_busybox_rootfs(self.base / "rootfs")

    async def purge(self) -> list[str]:
        """Kill and delete every task and container of our namespaces; report what was left."""
        if self.daemon is None or self.daemon.pid is None:
            return []
        left: list[str] = []
        bridge = await AsyncioBridge.start()
        try:
            for namespace in self.namespaces:
                remote = await Remote.connect(bridge, self.address, namespace, default_deadline=10)
                left += await _purge_namespace(remote)
        finally:
            with trio.CancelScope(shield=True):
                await bridge.aclose()
        return left

    def close(self) -> None:
        """Stop containerd and its shims, free our cgroups, remove the temp dir."""
        if self.daemon is not None:
            self.daemon.close(remove=False)
        for namespace in self.namespaces:
            _kill_cgroup_leftovers(namespace)
        with contextlib.suppress(OSError):
            _unmount_below(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


async def _purge_namespace(remote: Remote) -> list[str]:
    found: list[str] = []
    with trio.move_on_after(60):
        tasks = await remote.tasks_list()
        for task in tasks:
            found.append(f"task {remote.namespace}/{task.id}")
            if task.status != task_pb2.STOPPED:
                with contextlib.suppress(ContainerdError):
                    await remote.tasks_kill(task.id, signal.SIGKILL, all=True)
        for task in tasks:
            with contextlib.suppress(ContainerdError):
                await remote.tasks_wait(task.id, deadline=10)
            with contextlib.suppress(ContainerdError):
                await remote.tasks_delete(task.id)
        for container in await remote.containers_list():
            found.append(f"container {remote.namespace}/{container.id}")
            with contextlib.suppress(ContainerdError):
                await remote.containers_delete(container.id)
    return found


def _cgroup_dirs(namespace: str) -> list[Path]:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return [root / namespace]
    return [d / namespace for d in root.iterdir() if d.is_dir() and not d.is_symlink()]


def _kill_cgroup_leftovers(namespace: str) -> None:
    """Last resort after a crash: containers whose shim died are still in our cgroups."""
    for top in _cgroup_dirs(namespace):
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _unmount_below(path: Path) -> None:
    from actors.containerd._embedded import _unmount_below as unmount

    unmount(path)
