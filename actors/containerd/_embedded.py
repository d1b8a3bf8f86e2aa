"""A private containerd (and a busybox rootfs) for `serve`, the tests and the benchmarks.

containerd runs with its own root, state and sockets under one directory and with the CRI
plugin disabled, so it never touches a system containerd. Start and stop are synchronous
(subprocess management); Trio callers run them with ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from ..errors import Unavailable
from ._paths import default_state_root as default_state_root
from ._remote import DEFAULT_ADDRESS

__all__ = [
    "PrivateContainerd",
    "build_busybox_rootfs",
    "containerd_address",
    "default_state_root",
    "missing_host_tools",
]


REQUIRED_TOOLS = ("containerd", "runc", "containerd-shim-runc-v2")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def missing_host_tools() -> list[str]:
    """Names of what a private containerd needs but the host lacks (empty when all there)."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if _find_busybox() is None:
        missing.append("busybox (static)")
    return missing


def _find_busybox() -> str | None:
    for candidate in BUSYBOX_CANDIDATES:
        if os.path.isfile(candidate):
            return candidate
    return shutil.which("busybox")


def build_busybox_rootfs(target: str | os.PathLike[str]) -> Path:
    """Make a minimal rootfs from the host's static busybox (idempotent)."""
    busybox = _find_busybox()
    if busybox is None:
        raise FileNotFoundError("busybox not found: install the Debian package busybox-static")
    root = Path(target)
    marker = root / ".containerd-actors-rootfs"
    if marker.exists():
        return root
    for sub in ("bin", "proc", "dev", "sys", "tmp", "etc", "root", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    listing = subprocess.run(
        [busybox, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in listing:
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    marker.write_text("busybox rootfs\n")
    return root


def _answers(address: str) -> bool:
    if not address.startswith("/"):
        return True  # host:port: let the client report what happens
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


@contextlib.asynccontextmanager
async def containerd_address(
    address: str | None, state_root: Path, *, progress: Callable[[str], None] | None = None
) -> AsyncIterator[str]:
    """Yield a containerd address: the given/standard one if it answers, else an embedded one."""
    wanted = address or DEFAULT_ADDRESS
    if _answers(wanted):
        yield wanted
        return
    if address is not None:
        raise Unavailable(f"no containerd answers at {address}", local=True)
    missing = missing_host_tools()
    if missing:
        raise Unavailable(
            "no containerd is running and an embedded one needs "
            + ", ".join(missing)
            + " (apt-get install containerd runc busybox-static)",
            local=True,
        )
    daemon = PrivateContainerd(state_root / "embedded")
    if progress is not None:
        progress(f"no containerd at {wanted}; starting an embedded one at {daemon.address}")
    await trio.to_thread.run_sync(daemon.start)
    try:
        yield daemon.address
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(daemon.stop)


class PrivateContainerd:
    """One containerd process with everything under ``base_dir``."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        binary: str = "containerd",
        log_level: str = "warn",
    ) -> None:
        self.base_dir = Path(base_dir)
        self.binary = binary
        self.log_level = log_level
        self.root = self.base_dir / "root"
        self.state = self.base_dir / "state"
        self.address = str(self.base_dir / "containerd.sock")
        self.config_path = self.base_dir / "config.toml"
        self.log_path = self.base_dir / "containerd.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o711)
        self.config_path.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{self.root}"',
                    f'state = "{self.state}"',
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                    "[grpc]",
                    f'  address = "{self.address}"',
                    "[ttrpc]",
                    f'  address = "{self.address}.ttrpc"',
                    "[debug]",
                    f'  level = "{self.log_level}"',
                    "",
                ]
            )
        )

    def start(self, timeout: float = 20.0) -> None:
        """Start containerd and return once its socket accepts connections."""
        if self._process is not None and self._process.poll() is None:
            return
        self._write_config()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self._process = subprocess.Popen(
                [self.binary, "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"containerd exited with {self._process.returncode}; see {self.log_path}:\n"
                    + self.log_tail()
                )
            if self._socket_ready():
                return
            time.sleep(0.02)
        raise TimeoutError(f"containerd did not listen on {self.address} within {timeout}s")

    def _socket_ready(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.address)
            except OSError:
                return False
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signum)

    def kill(self) -> None:
        """SIGKILL containerd (shims survive, as with a real crash)."""
        if self._process is None:
            return
        self.signal(signal.SIGKILL)
        self._process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM containerd and wait; SIGKILL after ``timeout``. Shims keep running."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def shim_pids(self) -> list[int]:
        """Shims started by this containerd (their command line names our socket)."""
        needle = self.address.encode()
        return [
            pid
            for pid, _, cmdline in _processes()
            if b"containerd-shim" in cmdline and needle in cmdline
        ]

    def kill_shims(self) -> None:
        """SIGKILL our shims and the container inits they parent.

        Killing only a shim would orphan its container (the init keeps running, reparented
        to PID 1); killing the init ends its whole PID namespace.
        """
        shims = set(self.shim_pids())
        inits = [pid for pid, parent, _ in _processes() if parent in shims]
        for pid in [*inits, *shims]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self, *, remove: bool = True) -> None:
        """Stop containerd, kill leftover shims and (by default) remove the directory."""
        self.stop()
        self.kill_shims()
        if remove:
            _unmount_below(self.base_dir)
            shutil.rmtree(self.base_dir, ignore_errors=True)


def _processes() -> list[tuple[int, int, bytes]]:
    """(pid, parent pid, command line) of every process we can read in /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        found.append((int(entry), int(stat.rsplit(")", 1)[1].split()[1]), cmdline))
    return found


def _unmount_below(path: Path) -> None:
    prefix = str(path.resolve()) + "/"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    targets = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)
