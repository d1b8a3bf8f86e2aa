"""Density: many real idle containers under one supervisor, and shim groups side by side.

Two phases, each run for one shim per container and for shim groups (``actors.ShimGroups``)
in the same run, so their ratios are taken under the same load:

* ``run_idle``: N running busybox ``sleep`` containers (1,000 in full mode) started at
  concurrency 32 under one supervisor; memory per container (our RSS, Python heap blocks,
  the shims' PSS from /proc/PID/smaps_rollup); a second supervisor restoring all N (time and
  RPCs); its idle CPU over a window with wake-ups counted; removing them all.
* ``run_lifecycles``: busybox ``true`` lifecycles at concurrency 16 (and 1, for start
  latency) alternating between the two policies in every repetition: throughput, machine
  CPU per lifecycle, client CPU, and start latency (new_container + start).
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgspec
import trio

from actors import Client, ShimGroups, Task, build_spec, open_client
from actors.core.spec import Spec

from . import _env
from ._lab import Lab
from ._progress import Progress
from ._stats import Percentiles, Spread, percentiles, scaled, spread
from .lifecycle import Batch, run_batch

POLICIES = ("per-container", "groups")
START_CONCURRENCY = 32
LIFECYCLE_CONCURRENCY = 16


class Config(msgspec.Struct, frozen=True, kw_only=True):
    containers: int
    idle_seconds: float
    quiesce_seconds: float
    shims: int
    max_per_shim: int
    lifecycle_reps: int
    lifecycles_per_rep: int
    sequential_per_rep: int

    @property
    def groups(self) -> ShimGroups:
        return ShimGroups(shims=self.shims, max_per_shim=self.max_per_shim)


def config(quick: bool, *, smoke: bool = False) -> Config:
    """The run's sizes; ``smoke`` only checks the harness works (figures mean nothing)."""
    if smoke:
        return Config(
            containers=6,
            idle_seconds=1.0,
            quiesce_seconds=0.5,
            shims=2,
            max_per_shim=4,
            lifecycle_reps=1,
            lifecycles_per_rep=4,
            sequential_per_rep=2,
        )
    if quick:
        return Config(
            containers=100,
            idle_seconds=10.0,
            quiesce_seconds=2.0,
            shims=4,
            max_per_shim=32,
            lifecycle_reps=3,
            lifecycles_per_rep=32,
            sequential_per_rep=6,
        )
    return Config(
        containers=1000,
        idle_seconds=60.0,
        quiesce_seconds=3.0,
        shims=4,
        max_per_shim=32,
        lifecycle_reps=5,
        lifecycles_per_rep=64,
        sequential_per_rep=12,
    )


# -- memory of processes -------------------------------------------------------------------


def pss_bytes(pid: int | str = "self") -> int:
    """Proportional set size of a process (shared pages split among their users); 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def shims_of(namespace: str) -> list[int]:
    """Pids of the runc shims serving ``namespace`` (their command line names it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"containerd-shim-runc-v2"):
            continue
        try:
            if argv[argv.index(b"-namespace") + 1].decode() == namespace:
                found.append(int(entry))
        except (ValueError, IndexError):
            continue
    return found


# -- N idle containers ---------------------------------------------------------------------


class IdleResult(msgspec.Struct, frozen=True, kw_only=True):
    policy: str
    containers: int
    failures: int
    failure_samples: list[str]
    start_seconds: float  # the first nine tenths (the rest start under tracemalloc)
    started_timed: int
    start_per_s: float
    start_latency_ms: Percentiles
    rss_per_container_bytes: float
    heap_blocks_per_container: float  # sys.getallocatedblocks() growth
    heap_bytes_per_container: float  # tracemalloc, over the last tenth
    our_pss_bytes: int
    shims: int
    shim_pss_bytes: int
    shim_pss_per_container_bytes: float
    pss_per_container_bytes: float  # (our PSS + shims' PSS) / containers
    restored: int
    restore_seconds: float
    restore_rpcs: dict[str, int]
    idle_seconds: float
    idle_cpu_pct: float  # of one core, our whole process
    idle_cpu_trio_pct: float
    idle_cpu_threads_pct: float
    idle_wakeups: int  # thread wakeups in the window, the one that ends it included
    wakeup_floor_ms: float  # CPU charged to a minimal Python process for one 1 s sleep
    containerd_rss_bytes: int
    containerd_idle_cpu_pct: float
    remove_seconds: float
    remove_failures: int


async def _start_all(client: Client, spec: Spec, ids: list[str]) -> tuple[list[float], list[str]]:
    limiter = trio.CapacityLimiter(START_CONCURRENCY)
    latencies: list[float] = []
    failures: list[str] = []

    async def one(container_id: str) -> None:
        async with limiter:
            began = time.perf_counter()
            try:
                with trio.fail_after(120):
                    container = await client.new_container(container_id, spec)
                    await container.start()
            except Exception as exc:
                failures.append(f"{container_id}: {type(exc).__name__}: {exc}"[:300])
            else:
                latencies.append(time.perf_counter() - began)

    async with trio.open_nursery() as nursery:
        for container_id in ids:
            nursery.start_soon(one, container_id)
    return latencies, failures


async def _remove_all(client: Client) -> int:
    limiter = trio.CapacityLimiter(START_CONCURRENCY)
    failed = 0

    async def one(container_id: str) -> None:
        nonlocal failed
        async with limiter:
            try:
                with trio.fail_after(120):
                    container = await client.load_container(container_id)
                    task: Task | None
                    try:
                        task = await container.task()
                    except Exception:
                        task = None
                    if task is not None:
                        await task.force_delete()
                    await container.delete()
            except Exception:
                failed += 1

    async with trio.open_nursery() as nursery:
        for container in client.containers():
            nursery.start_soon(one, container.id)
    return failed


async def _idle_once(
    lab: Lab, cfg: Config, progress: Progress, policy: str, weight: float
) -> IdleResult:
    from supervisor import open_supervisor

    assert lab.rootfs is not None
    groups = cfg.groups if policy == "groups" else None
    namespace = lab.namespace(f"density-{policy}")
    state_dir = lab.state_dir(f"density-{policy}")
    spec = build_spec(lab.rootfs, ["sleep", "1000000"])
    ids = [f"d-{i}" for i in range(cfg.containers)]
    _env.raise_open_files_limit()
    timed = ids[: max(1, len(ids) * 9 // 10)]
    traced = ids[len(timed) :]
    async with open_supervisor(
        lab.address, namespace, state_dir=state_dir, shim_groups=groups
    ) as first:
        gc.collect()
        rss_before = _env.rss_bytes()
        blocks_before = sys.getallocatedblocks()
        began = time.perf_counter()
        latencies, failures = await _start_all(first, spec, timed)
        start_seconds = time.perf_counter() - began
        started_timed = len(latencies)
        gc.collect()
        blocks_after = sys.getallocatedblocks()
        # The last tenth starts under tracemalloc (slower, so not timed): the Python heap
        # each container's actor keeps, in bytes.
        heap_per_container = float("nan")
        if traced:
            tracemalloc.start()
            heap_before = tracemalloc.get_traced_memory()[0]
            more, more_failures = await _start_all(first, spec, traced)
            gc.collect()
            heap_after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            latencies_traced = len(more)
            failures += more_failures
            if latencies_traced:
                heap_per_container = (heap_after - heap_before) / latencies_traced
        else:
            more = []
        await trio.sleep(cfg.quiesce_seconds)
        gc.collect()
        rss_after = _env.rss_bytes()
        our_pss = pss_bytes()
        shim_pids = shims_of(namespace)
        shim_pss = sum(pss_bytes(pid) for pid in shim_pids)
    running = len(latencies) + len(more)
    progress.done(weight * 0.4, f"density {policy}: {running} containers running")

    began = time.perf_counter()
    async with open_supervisor(
        lab.address, namespace, state_dir=state_dir, shim_groups=groups
    ) as second:
        restore_seconds = time.perf_counter() - began
        restore_rpcs = dict(second.statistics().rpc.calls)
        restored = second.statistics().actors
        await trio.sleep(cfg.quiesce_seconds)
        before = _env.sample(lab.daemon_pid)
        asleep = _env.wakeups()
        await trio.sleep(cfg.idle_seconds)
        woken = _env.wakeups_since(asleep)
        after = _env.sample(lab.daemon_pid)
        idle = _env.delta(before, after)
        floor = await _env.wakeup_floor_ms()
        containerd_rss = _env.rss_bytes(lab.daemon_pid) if lab.daemon_pid else 0
        progress.done(weight * 0.3, f"density {policy}: restored and idle CPU measured")
        began = time.perf_counter()
        remove_failures = await _remove_all(second)
        remove_seconds = time.perf_counter() - began
    progress.done(weight * 0.3, f"density {policy}: removed")
    n = max(1, running)
    wall = idle.wall or 1.0
    return IdleResult(
        policy=policy,
        containers=running,
        failures=len(failures),
        failure_samples=failures[:3],
        start_seconds=start_seconds,
        started_timed=started_timed,
        start_per_s=started_timed / start_seconds if start_seconds else 0.0,
        start_latency_ms=scaled(percentiles(latencies), 1000),
        rss_per_container_bytes=(rss_after - rss_before) / n,
        heap_blocks_per_container=(blocks_after - blocks_before) / max(1, started_timed),
        heap_bytes_per_container=heap_per_container,
        our_pss_bytes=our_pss,
        shims=len(shim_pids),
        shim_pss_bytes=shim_pss,
        shim_pss_per_container_bytes=shim_pss / n,
        pss_per_container_bytes=(our_pss + shim_pss) / n,
        restored=restored,
        restore_seconds=restore_seconds,
        restore_rpcs=restore_rpcs,
        idle_seconds=idle.wall,
        idle_cpu_pct=100 * idle.process / wall,
        idle_cpu_trio_pct=100 * idle.main_thread / wall,
        idle_cpu_threads_pct=100 * idle.other_threads / wall,
        idle_wakeups=woken,
        wakeup_floor_ms=floor,
        containerd_rss_bytes=containerd_rss,
        containerd_idle_cpu_pct=100 * idle.daemon / wall,
        remove_seconds=remove_seconds,
        remove_failures=remove_failures,
    )


def estimate_idle(cfg: Config) -> float:
    return len(POLICIES) * (cfg.containers * 0.12 + cfg.idle_seconds + 3 * cfg.quiesce_seconds)


# Each runc shim is a Go process of about ten threads, and threads take pids.
THREADS_PER_SHIM = 12


def pid_room() -> int:
    """How many more threads the kernel's pid space allows right now (a rough bound)."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        threads_max = int(Path("/proc/sys/kernel/threads-max").read_text())
    except (OSError, ValueError):
        return sys.maxsize
    used = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                used += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return min(pid_max, threads_max) - used


async def run_idle(lab: Lab, cfg: Config, progress: Progress) -> list[IdleResult]:
    # One shim per container needs a shim's threads per container: fewer containers (said
    # in the report) rather than a machine out of pids.
    room = pid_room() - 2000
    fits = max(1, room // (THREADS_PER_SHIM + 1))
    if cfg.containers > fits:
        progress.say(
            f"density: only ~{room:,} free pids here; {fits} containers per policy instead of "
            f"{cfg.containers}"
        )
        cfg = msgspec.structs.replace(cfg, containers=fits)
    weight = estimate_idle(cfg) / len(POLICIES)
    return [await _idle_once(lab, cfg, progress, policy, weight) for policy in POLICIES]


# -- lifecycles side by side ---------------------------------------------------------------


class LifecyclePoint(msgspec.Struct, frozen=True, kw_only=True):
    policy: str
    concurrency: int
    reps: int
    throughput: Spread
    throughput_per_rep: list[float]
    latency_ms: Percentiles
    start_latency_ms: Percentiles  # new_container + start (create the task, start it)
    client_cpu_ms: Spread
    containerd_cpu_ms: Spread
    machine_cpu_ms: Spread
    machine_busy_pct: Spread
    rpcs_per_lifecycle: float
    shims_started: int
    create_retries: int
    failures: int
    failure_samples: list[str]


class LifecycleComparison(msgspec.Struct, frozen=True, kw_only=True):
    shims: int
    max_per_shim: int
    points: list[LifecyclePoint]


class _Runner:
    def __init__(self, client: Client, spec: Spec) -> None:
        self.client = client
        self.spec = spec
        self.starts: list[float] = []

    async def __call__(self, container_id: str) -> None:
        began = time.perf_counter()
        container = await self.client.new_container(container_id, self.spec)
        task = await container.start()
        self.starts.append(time.perf_counter() - began)
        await task.wait()
        await task.delete()
        await container.delete()


def estimate_lifecycles(cfg: Config) -> float:
    per_rep = cfg.lifecycles_per_rep / 20 + cfg.sequential_per_rep * 0.1
    return len(POLICIES) * cfg.lifecycle_reps * per_rep + 2


async def run_lifecycles(lab: Lab, cfg: Config, progress: Progress) -> LifecycleComparison:
    assert lab.rootfs is not None
    spec = build_spec(lab.rootfs, ["/bin/true"])
    collected: dict[tuple[str, int], list[tuple[Batch, list[float], int, int]]] = {}
    weight = estimate_lifecycles(cfg) / (len(POLICIES) * cfg.lifecycle_reps)
    async with (
        open_client(
            lab.address,
            lab.namespace("groups-per-container"),
            state_dir=lab.state_dir("groups-per-container"),
        ) as plain,
        open_client(
            lab.address,
            lab.namespace("groups-grouped"),
            state_dir=lab.state_dir("groups-grouped"),
            shim_groups=cfg.groups,
        ) as grouped,
    ):
        clients = {"per-container": plain, "groups": grouped}
        runners = {policy: _Runner(client, spec) for policy, client in clients.items()}
        for policy in POLICIES:  # warm-up
            ids = [f"w-{policy[:2]}-{i}" for i in range(4)]
            await run_batch(runners[policy], ids, 4, daemon_pid=lab.daemon_pid, rpc_calls=None)
        for rep in range(cfg.lifecycle_reps):
            order = POLICIES if rep % 2 == 0 else tuple(reversed(POLICIES))
            for policy in order:
                runner = runners[policy]
                client = clients[policy]
                for c, n in (
                    (1, cfg.sequential_per_rep),
                    (LIFECYCLE_CONCURRENCY, cfg.lifecycles_per_rep),
                ):
                    runner.starts = []
                    ids = [f"g{c}-{policy[:2]}-{rep}-{i}" for i in range(n)]
                    generations = _generations(client)
                    retries = _retries(client)
                    batch = await run_batch(
                        runner,
                        ids,
                        c,
                        daemon_pid=lab.daemon_pid,
                        rpc_calls=functools.partial(_rpc_calls, client),
                    )
                    shims = _generations(client) - generations if policy == "groups" else n
                    collected.setdefault((policy, c), []).append(
                        (batch, runner.starts, shims, _retries(client) - retries)
                    )
                rate = len(batch.latencies) / batch.cpu.wall if batch.cpu.wall else 0
                progress.done(
                    weight,
                    f"shim groups side by side rep {rep + 1}: {policy} {rate:.1f}/s at "
                    f"c={LIFECYCLE_CONCURRENCY}",
                )
    points = [
        _lifecycle_point(policy, c, collected[(policy, c)])
        for c in (1, LIFECYCLE_CONCURRENCY)
        for policy in POLICIES
    ]
    return LifecycleComparison(shims=cfg.shims, max_per_shim=cfg.max_per_shim, points=points)


def _rpc_calls(client: Client) -> dict[str, int]:
    return dict(client.statistics().rpc.calls)


def _generations(client: Client) -> int:
    stats = client.statistics().shim_groups
    return stats.generations if stats is not None else 0


def _retries(client: Client) -> int:
    stats = client.statistics().shim_groups
    return stats.create_retries if stats is not None else 0


def _lifecycle_point(
    policy: str, c: int, runs: list[tuple[Batch, list[float], int, int]]
) -> LifecyclePoint:
    batches = [b for b, _, _, _ in runs]
    rpcs = sum(sum(b.rpcs.values()) for b in batches)
    attempted = sum(len(b.latencies) + len(b.failures) for b in batches)

    def per(get: Callable[[_env.CpuDelta], float]) -> Spread:
        return spread([get(b.cpu) * 1000 / len(b.latencies) for b in batches if b.latencies])

    ncpu = os.cpu_count() or 1
    rates = [len(b.latencies) / b.cpu.wall if b.cpu.wall else 0.0 for b in batches]
    failures = [f for b in batches for f in b.failures]
    return LifecyclePoint(
        policy=policy,
        concurrency=c,
        reps=len(batches),
        throughput=spread(rates),
        throughput_per_rep=rates,
        latency_ms=scaled(percentiles([x for b in batches for x in b.latencies]), 1000),
        start_latency_ms=scaled(percentiles([x for _, s, _, _ in runs for x in s]), 1000),
        client_cpu_ms=per(lambda d: d.process),
        containerd_cpu_ms=per(lambda d: d.daemon),
        machine_cpu_ms=per(lambda d: d.machine_busy),
        machine_busy_pct=spread(
            [100 * b.cpu.machine_busy / (b.cpu.wall * ncpu) for b in batches if b.cpu.wall]
        ),
        rpcs_per_lifecycle=rpcs / attempted if attempted else float("nan"),
        shims_started=sum(s for _, _, s, _ in runs),
        create_retries=sum(r for _, _, _, r in runs),
        failures=len(failures),
        failure_samples=failures[:3],
    )


__all__ = [
    "POLICIES",
    "Config",
    "IdleResult",
    "LifecycleComparison",
    "LifecyclePoint",
    "config",
    "pss_bytes",
    "run_idle",
    "run_lifecycles",
    "shims_of",
]
