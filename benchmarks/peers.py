"""The peers users would pick instead: ``docker run --rm`` and ``podman run --rm``, same run.

Each peer runs the same busybox ``true`` lifecycle as ours, at concurrency 1 and 16,
interleaved with ours in every repetition (ratios are per repetition):

* docker: Debian's ``dockerd`` started here on its own data root, exec root and socket,
  driving the run's private containerd (``--containerd``; namespace ``moby``), without
  networking; the busybox rootfs is imported as an image. Stopped (SIGTERM) afterwards.
* podman: Debian's ``podman`` with its own root and run root (vfs storage, cgroupfs, no
  events), the rootfs imported the same way; its runtime is runc through conmon.

A peer that cannot start here is skipped with the reason printed and reported.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import signal
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import trio

from actors import build_spec, open_client

from ._lab import Lab
from ._progress import Progress
from ._stats import Percentiles, Spread, percentiles, scaled, spread
from .lifecycle import Batch, _Ours, run_batch

IMAGE = "cab-busybox"
DOCKER = "/usr/bin/docker"  # Debian's docker.io client (another `docker` may be on PATH)
DOCKERD = "/usr/sbin/dockerd"
PEERS = ("ours", "docker", "podman")


class Config(msgspec.Struct, frozen=True, kw_only=True):
    reps: int
    sequential: int
    concurrent: int
    concurrency: int = 16


def config(quick: bool, *, smoke: bool = False) -> Config:
    if smoke:
        return Config(reps=1, sequential=2, concurrent=4)
    if quick:
        return Config(reps=2, sequential=6, concurrent=16)
    return Config(reps=3, sequential=12, concurrent=32)


class PeerPoint(msgspec.Struct, frozen=True, kw_only=True):
    peer: str
    concurrency: int
    reps: int
    throughput: Spread
    throughput_per_rep: list[float]
    latency_ms: Percentiles
    machine_cpu_ms: Spread
    failures: int
    failure_samples: list[str]


class PeersResult(msgspec.Struct, frozen=True, kw_only=True):
    points: list[PeerPoint]
    skipped: dict[str, str]
    versions: dict[str, str]


def _rootfs_tar(rootfs: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(rootfs), arcname=".")
    return buffer.getvalue()


async def _check(command: list[str], *, stdin: bytes = b"", limit: float = 60) -> str:
    with trio.fail_after(limit):
        result = await trio.run_process(
            command, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
        )
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{Path(command[0]).name} exited {result.returncode}: {err[-1:]}")
    return result.stdout.decode(errors="replace").strip()


class _Subprocess:
    """One ``run --rm`` per lifecycle."""

    def __init__(self, command: list[str]) -> None:
        self.command = command

    async def __call__(self, container_id: str) -> None:
        await _check([*self.command, "--name", container_id, IMAGE, "/bin/true"], limit=120)


@contextlib.asynccontextmanager
async def _docker(lab: Lab) -> AsyncIterator[_Subprocess]:
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
                    await _check([*client, "version"], limit=10)
                    break
                await trio.sleep(0.5)
        if process.poll() is not None or not socket.exists():
            tail = (base / "dockerd.log").read_text(errors="replace").strip().splitlines()[-2:]
            raise RuntimeError(f"dockerd did not start: {tail}")
        assert lab.rootfs is not None
        await _check([*client, "import", "-", IMAGE], stdin=_rootfs_tar(lab.rootfs))
        yield _Subprocess([*client, "run", "--rm", "--network", "none"])
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


def _podman_base(lab: Lab) -> list[str]:
    base = lab.base / "podman"
    return [
        "podman",
        "--root", str(base / "root"),
        "--runroot", str(base / "run"),
        "--tmpdir", str(base / "tmp"),
        "--storage-driver", "vfs",
        "--cgroup-manager", "cgroupfs",
        "--events-backend", "none",
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def _podman(lab: Lab) -> AsyncIterator[_Subprocess]:
    if shutil.which("podman") is None:
        raise RuntimeError("podman not installed (Debian package podman)")
    base = _podman_base(lab)
    assert lab.rootfs is not None
    await _check([*base, "import", "-", IMAGE], stdin=_rootfs_tar(lab.rootfs))
    # podman asks runc for its own default rlimits (1,048,576 files, more processes than a
    # sandbox may grant: runc then fails with EPERM): ask for what the host allows instead,
    # the same for every container, so the comparison is unaffected.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = ["--ulimit", "nproc=4096:4096"]
    if nofile != resource.RLIM_INFINITY:
        limits += ["--ulimit", f"nofile={nofile}:{nofile}"]
    runner = _Subprocess([*base, "run", "--rm", "--network", "none", *limits])
    try:
        await runner("cab-probe")  # fails here, with the reason, if it cannot run
        yield runner
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(60):
            with contextlib.suppress(Exception):
                await _check([*base, "rm", "--all", "--force"])
            with contextlib.suppress(Exception):
                await _check([*base, "system", "reset", "--force"])


def estimate(cfg: Config) -> float:
    per_rep = cfg.sequential * 0.6 + cfg.concurrent * 0.25
    return 15 + len(PEERS) * cfg.reps * per_rep


async def _version(command: list[str]) -> str:
    try:
        return (await _check(command, limit=20)).splitlines()[0]
    except (RuntimeError, OSError, trio.TooSlowError) as exc:
        return f"unknown ({exc})"


async def run(lab: Lab, cfg: Config, progress: Progress) -> PeersResult:
    assert lab.rootfs is not None
    skipped: dict[str, str] = {}
    batches: dict[tuple[str, int], list[Batch]] = {}
    versions = {
        "docker": await _version([DOCKERD, "--version"]) if os.access(DOCKERD, os.X_OK) else "",
        "podman": await _version(["podman", "--version"]) if shutil.which("podman") else "",
    }
    weight = estimate(cfg) / (cfg.reps + 1)
    async with contextlib.AsyncExitStack() as stack:
        ours_client = await stack.enter_async_context(
            open_client(lab.address, lab.namespace("peers"), state_dir=lab.state_dir("peers"))
        )
        runners: dict[str, Callable[[str], Awaitable[object]]] = {
            "ours": _Ours(ours_client, build_spec(lab.rootfs, ["/bin/true"]))
        }
        for peer, opener in (("docker", _docker), ("podman", _podman)):
            try:
                runners[peer] = await stack.enter_async_context(opener(lab))
            except (RuntimeError, OSError, trio.TooSlowError) as exc:
                skipped[peer] = str(exc) or type(exc).__name__
                progress.say(f"peers: {peer} skipped: {skipped[peer]}")
        progress.done(weight, "peers ready: " + ", ".join(runners))
        for rep in range(cfg.reps):
            names = list(runners)
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for peer in order:
                for c, n in ((1, cfg.sequential), (cfg.concurrency, cfg.concurrent)):
                    ids = [f"p{c}-{peer[:2]}-{rep}-{i}-{os.getpid()}" for i in range(n)]
                    batch = await run_batch(
                        runners[peer], ids, c, daemon_pid=lab.daemon_pid, rpc_calls=None
                    )
                    batches.setdefault((peer, c), []).append(batch)
            progress.done(weight, f"peers rep {rep + 1}/{cfg.reps} done")
    points = [
        _point(peer, c, batches[(peer, c)])
        for c in (1, cfg.concurrency)
        for peer in PEERS
        if (peer, c) in batches
    ]
    return PeersResult(points=points, skipped=skipped, versions=versions)


def _point(peer: str, c: int, batches: list[Batch]) -> PeerPoint:
    rates = [len(b.latencies) / b.cpu.wall if b.cpu.wall else 0.0 for b in batches]
    failures = [f for b in batches for f in b.failures]
    return PeerPoint(
        peer=peer,
        concurrency=c,
        reps=len(batches),
        throughput=spread(rates),
        throughput_per_rep=rates,
        latency_ms=scaled(percentiles([x for b in batches for x in b.latencies]), 1000),
        machine_cpu_ms=spread(
            [b.cpu.machine_busy * 1000 / len(b.latencies) for b in batches if b.latencies]
        ),
        failures=len(failures),
        failure_samples=failures[:3],
    )


__all__ = ["PEERS", "Config", "PeerPoint", "PeersResult", "config", "estimate", "run"]
