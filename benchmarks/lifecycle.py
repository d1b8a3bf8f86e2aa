"""Lifecycle benchmark: create, start, exit, delete task, delete container of busybox `true`.

Three clients run the same lifecycles at the same concurrency, interleaved within each
repetition so that drift on a shared machine hits all of them alike:

* ``ours``: :func:`actors.open_client` (5 RPCs per lifecycle, exit from the event stream);
* ``stateless``: :mod:`benchmarks.stateless` (pre-refactor libcontainerd's re-reads);
* ``ctr``: ``ctr run --rm --rootfs`` as one subprocess per lifecycle.
"""

from __future__ import annotations

import collections
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import trio

from actors import Client, EventType, build_spec, open_client
from actors.core.spec import Spec

from . import _env
from ._lab import Lab
from ._probe import LatencyProbe
from ._profile import Profile, pyspy
from ._progress import Progress
from ._stats import Percentiles, Spread, percentiles, scaled, spread
from .stateless import RPCS_PER_LIFECYCLE, StatelessClient, open_stateless

MODES = ("ours", "stateless", "ctr")
CTR_REFERENCE_RPCS = 13
PROFILED_CONCURRENCY = 16
LIFECYCLE_TIMEOUT = 120.0  # seconds; one stuck lifecycle must not hang the run


class Config(msgspec.Struct, frozen=True, kw_only=True):
    concurrency: list[int]
    reps: int
    base_lifecycles: int
    per_concurrency: int  # lifecycles per repetition: max(base, per_concurrency * c)
    warmup: int

    def lifecycles(self, concurrency: int) -> int:
        return max(self.base_lifecycles, self.per_concurrency * concurrency)


def config(quick: bool, *, smoke: bool = False) -> Config:
    """The run's sizes; ``smoke`` only checks the harness works (figures mean nothing)."""
    if smoke:
        return Config(concurrency=[1, 4], reps=1, base_lifecycles=3, per_concurrency=1, warmup=1)
    if quick:
        return Config(
            concurrency=[1, 4, 16, 64], reps=3, base_lifecycles=16, per_concurrency=1, warmup=4
        )
    return Config(
        concurrency=[1, 4, 16, 64], reps=5, base_lifecycles=48, per_concurrency=2, warmup=8
    )


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """One client at one concurrency, over every repetition."""

    mode: str
    concurrency: int
    lifecycles_per_rep: int
    reps: int
    throughput: Spread
    throughput_per_rep: list[float]
    latency_ms: Percentiles
    rpcs_per_lifecycle: float | None
    rpcs_source: str
    rpc_breakdown: dict[str, float]
    client_cpu_ms: Spread
    client_cpu_source: str
    trio_thread_cpu_ms: Spread | None
    bridge_threads_cpu_ms: Spread | None
    containerd_cpu_ms: Spread
    machine_cpu_ms: Spread
    machine_busy_pct: Spread
    exit_event_latency_ms: Percentiles | None
    failures: int
    failure_samples: list[str]


class Result(msgspec.Struct, frozen=True, kw_only=True):
    config: Config
    points: list[Point]
    profile: Profile | None = None
    note: str = ""


class Batch(msgspec.Struct, kw_only=True):
    latencies: list[float]
    failures: list[str]
    cpu: _env.CpuDelta
    rpcs: dict[str, int]


Runner = Callable[[str], Awaitable[object]]


async def run_batch(
    runner: Runner,
    ids: Sequence[str],
    concurrency: int,
    *,
    daemon_pid: int | None,
    rpc_calls: Callable[[], dict[str, int]] | None,
) -> Batch:
    limiter = trio.CapacityLimiter(concurrency)
    latencies: list[float] = []
    failures: list[str] = []

    async def one(container_id: str) -> None:
        async with limiter:
            begun = time.perf_counter()
            try:
                with trio.fail_after(LIFECYCLE_TIMEOUT):
                    await runner(container_id)
            except Exception as exc:  # counted and shown; the phase's purge cleans up
                failures.append(f"{container_id}: {type(exc).__name__}: {exc}"[:300])
            else:
                latencies.append(time.perf_counter() - begun)

    rpcs_before = rpc_calls() if rpc_calls is not None else {}
    before = _env.sample(daemon_pid)
    async with trio.open_nursery() as nursery:
        for container_id in ids:
            nursery.start_soon(one, container_id)
    after = _env.sample(daemon_pid)
    rpcs_after = rpc_calls() if rpc_calls is not None else {}
    rpcs = {k: v - rpcs_before.get(k, 0) for k, v in rpcs_after.items()}
    return Batch(
        latencies=latencies,
        failures=failures,
        cpu=_env.delta(before, after),
        rpcs={k: v for k, v in rpcs.items() if v},
    )


class _Ours:
    def __init__(self, client: Client, spec: Spec) -> None:
        self.client = client
        self.spec = spec

    async def __call__(self, container_id: str) -> None:
        container = await self.client.new_container(container_id, self.spec)
        task = await container.start()
        await task.wait()
        await task.delete()
        await container.delete()

    def rpc_calls(self) -> dict[str, int]:
        return dict(self.client.statistics().rpc.calls)


class _Stateless:
    def __init__(self, client: StatelessClient, spec: Spec) -> None:
        self.client = client
        self.spec = spec

    async def __call__(self, container_id: str) -> None:
        await self.client.lifecycle(container_id, self.spec)

    def rpc_calls(self) -> dict[str, int]:
        return dict(self.client.remote.statistics().calls)


class _Ctr:
    def __init__(self, lab: Lab, namespace: str) -> None:
        assert lab.rootfs is not None
        self.base = ["ctr", "-a", lab.address, "-n", namespace]
        self.rootfs = str(lab.rootfs)
        self.fifo_dir = lab.fifo_dir()

    async def __call__(self, container_id: str) -> None:
        command = [*self.base, "run", "--rm", "--fifo-dir", self.fifo_dir, "--rootfs"]
        command += [self.rootfs, container_id, "/bin/true"]
        result = await trio.run_process(
            command, stdin=b"", capture_stdout=True, capture_stderr=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"ctr exited {result.returncode}: {result.stderr.decode(errors='replace')}"
            )


def _weights(cfg: Config) -> dict[int, float]:
    # Expected seconds of one repetition (three clients) at each concurrency.
    return {c: cfg.lifecycles(c) * 0.09 * 3 / min(c, 3) for c in cfg.concurrency}


def estimate(cfg: Config) -> float:
    weights = _weights(cfg)
    extra = weights.get(PROFILED_CONCURRENCY, 0.0)
    return 3 * cfg.warmup * 0.1 + sum(w * cfg.reps for w in weights.values()) + extra


async def run(lab: Lab, cfg: Config, progress: Progress, *, profile_dir: str | None) -> Result:
    assert lab.rootfs is not None
    spec = build_spec(lab.rootfs, ["/bin/true"])
    probe = LatencyProbe()
    weights = _weights(cfg)

    batches: dict[tuple[str, int], list[Batch]] = collections.defaultdict(list)
    exit_latencies: dict[int, list[float]] = collections.defaultdict(list)
    profile: Profile | None = None
    async with (
        open_client(
            lab.address, lab.namespace("life-ours"), probe, state_dir=lab.state_dir("life-ours")
        ) as client,
        open_stateless(
            lab.address, lab.namespace("life-stateless"), lab.state_dir("life-stateless")
        ) as stateless,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(probe.consume, client.events(buffer=1 << 16))
        runners: dict[str, tuple[Runner, Callable[[], dict[str, int]] | None]] = {}
        ours = _Ours(client, spec)
        runners["ours"] = (ours, ours.rpc_calls)
        plain = _Stateless(stateless, spec)
        runners["stateless"] = (plain, plain.rpc_calls)
        runners["ctr"] = (_Ctr(lab, lab.namespace("life-ctr")), None)

        for mode in MODES:  # warm-up: imports, caches, the shim binary in page cache
            runner, _ = runners[mode]
            ids = [f"warm-{mode}-{i}" for i in range(cfg.warmup)]
            await run_batch(runner, ids, 4, daemon_pid=lab.daemon_pid, rpc_calls=None)
        progress.done(3 * cfg.warmup * 0.1, "lifecycle warm-up done")

        for c in cfg.concurrency:
            n = cfg.lifecycles(c)
            for rep in range(cfg.reps):
                order = MODES[rep % 3 :] + MODES[: rep % 3]
                for mode in order:
                    runner, calls = runners[mode]
                    ids = [f"l{c}-{mode[:2]}-{rep}-{i}" for i in range(n)]
                    probe.clear()
                    batch = await run_batch(
                        runner, ids, c, daemon_pid=lab.daemon_pid, rpc_calls=calls
                    )
                    batches[(mode, c)].append(batch)
                    if mode == "ours":
                        await trio.sleep(0.05)  # let the last callbacks land
                        exit_latencies[c] += probe.latencies(EventType.EXIT)
                    rate = len(batch.latencies) / batch.cpu.wall if batch.cpu.wall else 0
                    progress.done(
                        weights[c] / 3,
                        f"lifecycle c={c} {mode} rep {rep + 1}/{cfg.reps}: "
                        f"{rate:.1f}/s, {len(batch.failures)} failed",
                    )
            if profile_dir is not None and c == PROFILED_CONCURRENCY:
                # One more batch of ours under py-spy, not counted: where our CPU goes.
                runner, calls = runners["ours"]
                ids = [f"prof-{i}" for i in range(max(64, n))]  # enough samples
                out = Path(profile_dir) / "profile-lifecycle.txt"
                async with pyspy(out) as got:
                    await run_batch(runner, ids, c, daemon_pid=lab.daemon_pid, rpc_calls=calls)
                profile = got[0] if got else None
                progress.done(weights[c], f"lifecycle c={c} ours profiled (not counted)")
        nursery.cancel_scope.cancel()
    points = [
        _point(mode, c, cfg, batches[(mode, c)], exit_latencies.get(c) if mode == "ours" else None)
        for c in cfg.concurrency
        for mode in MODES
    ]
    return Result(config=cfg, points=points, profile=profile)


def _point(
    mode: str, concurrency: int, cfg: Config, batches: list[Batch], exits: list[float] | None
) -> Point:
    latencies = [x for b in batches for x in b.latencies]
    failures = [f for b in batches for f in b.failures]

    def per_lifecycle(get: Callable[[_env.CpuDelta], float]) -> Spread:
        return spread([get(b.cpu) * 1000 / len(b.latencies) for b in batches if b.latencies])

    done = sum(len(b.latencies) for b in batches)
    breakdown: collections.Counter[str] = collections.Counter()
    for b in batches:
        breakdown.update(b.rpcs)
    if mode == "ctr":
        rpcs: float | None = float(CTR_REFERENCE_RPCS)
        source = "reference, not measured (containerd-and-moby.md: ctr 1.6.20)"
        cpu = per_lifecycle(lambda d: d.children)
        cpu_source = "ctr child processes (RUSAGE_CHILDREN)"
        main = threads = None
    else:
        total = sum(breakdown.values())
        attempted = sum(len(b.latencies) + len(b.failures) for b in batches)
        rpcs = total / attempted if attempted else math.nan
        source = "measured (client RPC counters)"
        cpu = per_lifecycle(lambda d: d.process)
        cpu_source = "this process (time.process_time)"
        main = per_lifecycle(lambda d: d.main_thread)
        threads = per_lifecycle(lambda d: d.other_threads)
    ncpu = os.cpu_count() or 1
    rates = [len(b.latencies) / b.cpu.wall if b.cpu.wall else 0.0 for b in batches]
    return Point(
        mode=mode,
        concurrency=concurrency,
        lifecycles_per_rep=cfg.lifecycles(concurrency),
        reps=len(batches),
        throughput=spread(rates),
        throughput_per_rep=rates,
        latency_ms=scaled(percentiles(latencies), 1000),
        rpcs_per_lifecycle=rpcs,
        rpcs_source=source,
        rpc_breakdown={k: v / done for k, v in sorted(breakdown.items())} if done else {},
        client_cpu_ms=cpu,
        client_cpu_source=cpu_source,
        trio_thread_cpu_ms=main,
        bridge_threads_cpu_ms=threads,
        containerd_cpu_ms=per_lifecycle(lambda d: d.daemon),
        machine_cpu_ms=per_lifecycle(lambda d: d.machine_busy),
        machine_busy_pct=spread(
            [100 * b.cpu.machine_busy / (b.cpu.wall * ncpu) for b in batches if b.cpu.wall]
        ),
        exit_event_latency_ms=scaled(percentiles(exits), 1000) if exits else None,
        failures=len(failures),
        failure_samples=failures[:3],
    )


__all__ = ["CTR_REFERENCE_RPCS", "MODES", "RPCS_PER_LIFECYCLE", "Config", "Point", "Result"]
