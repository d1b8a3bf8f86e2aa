"""Debian's dockerd, started for one benchmark run (shared by peers.py and output.py).

dockerd runs on its own data root, exec root and socket, drives the run's private containerd
(``--containerd``; namespace ``moby``), has no networking, and gets the lab's busybox rootfs
imported as an image, so docker runs exactly the files ours does. It is stopped (SIGTERM,
then SIGKILL) when the context exits.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from ._lab import Lab

__all__ = ["DOCKER", "DOCKERD", "IMAGE", "DockerDaemon", "check", "docker_daemon", "rootfs_tar"]

IMAGE = "cab-busybox"
DOCKER = "/usr/bin/docker"  # Debian's docker.io client (another `docker` may be on PATH)
DOCKERD = "/usr/sbin/dockerd"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rootfs_tar(rootfs: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(rootfs), arcname=".")
    return buffer.getvalue()


async def check(command: list[str], *, stdin: bytes = b"", limit: float = 60) -> str:
    """Run ``command`` to its end; its stdout, or RuntimeError naming its last error line."""
    with trio.fail_after(limit):
        result = await trio.run_process(
            command, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
        )
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{Path(command[0]).name} exited {result.returncode}: {err[-1:]}")
    return result.stdout.decode(errors="replace").strip()


class DockerDaemon:
    """A running dockerd: ``client`` is the docker CLI's argv prefix for its socket."""

    def __init__(self, pid: int, client: list[str]) -> None:
        self.pid = pid
        self.client = client

    def cpu_seconds(self) -> float:
        """dockerd's CPU so far (all its threads, plus children it reaped), from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the command: state is field 3, utime..cstime are fields 14..17 (1-based).
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return (utime + stime + cutime + cstime) / _CLOCK_TICKS


@contextlib.asynccontextmanager
async def docker_daemon(lab: Lab) -> AsyncIterator[DockerDaemon]:
    """Start dockerd for ``lab`` (RuntimeError with the reason if it cannot start here)."""
    for binary in (DOCKER, DOCKERD):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} not installed (Debian package docker.io)")
    base = lab.base / "docker"
    base.mkdir(parents=True, exist_ok=True)
    socket = base / "d.sock"
    log = (base / "dockerd.log").open("wb")
    command = [
        DOCKERD,
        "--data-root", str(base / "data"),
        "--exec-root", str(base / "exec"),
        "--pidfile", str(base / "dockerd.pid"),
        "-H", f"unix://{socket}",
        "--containerd", lab.address,
        "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(command, stdout=log, stderr=log)
    client = [DOCKER, "-H", f"unix://{socket}"]
    try:
        with trio.move_on_after(60):
            while process.poll() is None:
                with contextlib.suppress(RuntimeError):
                    await check([*client, "version"], limit=10)
                    break
                await trio.sleep(0.5)
        if process.poll() is not None or not socket.exists():
            tail = (base / "dockerd.log").read_text(errors="replace").strip().splitlines()[-2:]
            raise RuntimeError(f"dockerd did not start: {tail}")
        assert lab.rootfs is not None
        await check([*client, "import", "-", IMAGE], stdin=rootfs_tar(lab.rootfs))
        yield DockerDaemon(process.pid, client)
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(30):
                    await process.wait()
                if process.poll() is None:
                    process.kill()
                    await process.wait()
            log.close()
