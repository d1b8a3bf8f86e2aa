"""The peers users would pick instead: ``docker run --rm`` and ``podman run --rm``, same run.

Each peer runs the same busybox ``true`` lifecycle as ours, at concurrency 1 and 16,
interleaved with ours in every repetition (ratios are per repetition):

* docker: Debian's ``dockerd`` started here on its own data root, exec root and socket,
  driving the run's private containerd, the busybox rootfs imported as an image
  (:mod:`benchmarks._docker`, shared with the output benchmark).
* podman: Debian's ``podman`` with its own root and run root (vfs storage, cgroupfs, no
  events), the rootfs imported the same way; its runtime is runc through conmon.

A peer that cannot start here is skipped with the reason printed and reported.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import trio

from actors import build_spec, open_client

from ._docker import DOCKERD, IMAGE, docker_daemon
from ._docker import check as _check
from ._docker import rootfs_tar as _rootfs_tar
from ._lab import Lab
from ._progress import Progress
from ._stats import Percentiles, Spread, percentiles, scaled, spread
from .lifecycle import Batch, _Ours, run_batch

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


class _Subprocess:
    """One ``run --rm`` per lifecycle."""

    def __init__(self, command: list[str]) -> None:
        self.command = command

    async def __call__(self, container_id: str) -> None:
        await _check([*self.command, "--name", container_id, IMAGE, "/bin/true"], limit=120)


@contextlib.asynccontextmanager
async def _docker(lab: Lab) -> AsyncIterator[_Subprocess]:
    async with docker_daemon(lab) as daemon:
        yield _Subprocess([*daemon.client, "run", "--rm", "--network", "none"])


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
