"""Scale: 10,000 actors on the fake (memory per actor, command round trips under load), and
real running containers under one client (memory of our process, CPU while idle).
"""

from __future__ import annotations

import gc
import random
import tempfile
import time
import tracemalloc

import msgspec
import trio

from actors import Task, build_spec
from actors.containerd.pb.containerd.events import task_pb2 as task_events
from actors.testing import FakeContainerd, envelopes_for, open_fake_client

from . import _env
from ._lab import Lab
from ._progress import Progress
from ._stats import Percentiles, percentiles, scaled
from .control import start_sleepers, stop_sleepers

FAKE_NAMESPACE = "scale"


class Config(msgspec.Struct, frozen=True, kw_only=True):
    fake_actors: int
    load_seconds: float
    load_workers: int
    load_ops_per_s: int
    load_events_per_s: int
    real_containers: int
    idle_seconds: float
    quiesce_seconds: float


def config(quick: bool, *, smoke: bool = False) -> Config:
    """The run's sizes; ``smoke`` only checks the harness works (figures mean nothing)."""
    if smoke:
        return Config(
            fake_actors=200,
            load_seconds=0.5,
            load_workers=4,
            load_ops_per_s=200,
            load_events_per_s=1_000,
            real_containers=3,
            idle_seconds=1.0,
            quiesce_seconds=0.5,
        )
    return Config(
        fake_actors=10_000,
        load_seconds=3.0 if quick else 10.0,
        load_workers=64,
        load_ops_per_s=2_000,
        load_events_per_s=5_000,
        real_containers=50 if quick else 200,
        idle_seconds=10.0,
        quiesce_seconds=3.0,
    )


class FakeScale(msgspec.Struct, frozen=True, kw_only=True):
    actors: int
    create_seconds: float
    rss_before_bytes: int
    rss_after_bytes: int
    bytes_per_actor: float
    heap_bytes_per_actor: float
    heap_sample: int
    idle_status_ms: Percentiles  # 0-RPC command, no load
    idle_pids_ms: Percentiles  # 1-RPC command, no load
    status_under_load_ms: Percentiles
    pids_under_load_ms: Percentiles
    load_ops_per_s: float
    load_events_per_s: float
    load_description: str


class RealScale(msgspec.Struct, frozen=True, kw_only=True):
    containers: int
    reduced_for_quick: bool
    start_seconds: float
    rss_before_bytes: int
    rss_after_bytes: int
    bytes_per_container: float
    heap_bytes_per_container: float
    restored: int  # actors the second supervisor adopted
    restore_seconds: float
    restore_rpcs: dict[str, int]  # everything it sent before it was ready
    idle_seconds: float
    idle_wakeups: int  # thread wakeups in the window, the one that ends it included
    wakeup_floor_ms: float  # CPU charged to a minimal Python process for one 1 s sleep
    idle_cpu_pct: float  # of one core, our whole process
    idle_cpu_trio_pct: float
    idle_cpu_threads_pct: float
    containerd_idle_cpu_pct: float
    containerd_rss_bytes: int


class Result(msgspec.Struct, frozen=True, kw_only=True):
    config: Config
    fake: FakeScale | None
    real: RealScale | None
    note: str = ""


async def _probe(
    tasks: list[Task], seconds: float, rng: random.Random
) -> tuple[list[float], list[float]]:
    status: list[float] = []
    pids: list[float] = []
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        task = tasks[rng.randrange(len(tasks))]
        began = time.perf_counter()
        await task.status()
        status.append(time.perf_counter() - began)
        began = time.perf_counter()
        await task.pids()
        pids.append(time.perf_counter() - began)
        await trio.sleep(0.002)
    return status, pids


def estimate_fake(cfg: Config) -> float:
    return cfg.fake_actors / 2000 + 2 + cfg.load_seconds


def estimate_real(cfg: Config) -> float:
    return cfg.real_containers * 0.2 + cfg.quiesce_seconds + cfg.idle_seconds


async def run_fake(cfg: Config, progress: Progress) -> FakeScale:
    _env.raise_open_files_limit()
    rng = random.Random(42)
    fake = FakeContainerd()
    with tempfile.TemporaryDirectory(prefix="cab-scale-") as state_dir:
        async with open_fake_client(fake, FAKE_NAMESPACE, state_dir=state_dir) as client:
            # Terminal tasks hold one FIFO each (no stderr), so 10,000 fit the fd limit.
            spec = build_spec("/", ["sleep", "inf"], terminal=True)
            gc.collect()
            rss_before = _env.rss_bytes()
            began = time.perf_counter()
            tasks: list[Task] = []
            # The last tenth is created under tracemalloc: the Python heap each actor keeps
            # (RSS alone also reuses memory that earlier phases freed).
            sample = max(1, cfg.fake_actors // 10)
            created_untraced = heap_before = 0.0
            for i in range(cfg.fake_actors):
                if i == cfg.fake_actors - sample:
                    created_untraced = time.perf_counter() - began
                    tracemalloc.start()
                    heap_before = tracemalloc.get_traced_memory()[0]
                container = await client.new_container(f"s{i}", spec)
                tasks.append(await container.start())
            gc.collect()
            heap_after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            created = created_untraced * cfg.fake_actors / (cfg.fake_actors - sample)
            gc.collect()
            rss_after = _env.rss_bytes()
            progress.done(cfg.fake_actors / 2000, f"{cfg.fake_actors} actors up in {created:.1f}s")

            idle_status, idle_pids = await _probe(tasks, 1.0, rng)
            ops = 0
            injected = 0

            async def worker() -> None:
                # Open loop at a fixed rate, so latency is measured with headroom left rather
                # than at saturation; a worker that falls behind skips, never bursts.
                nonlocal ops
                period = cfg.load_workers / cfg.load_ops_per_s
                due = trio.current_time() + rng.random() * period
                while True:
                    await trio.sleep_until(due)
                    await tasks[rng.randrange(len(tasks))].status(refresh=True)
                    ops += 1
                    due = max(due + period, trio.current_time())

            async def injector() -> None:
                nonlocal injected
                per_tick = cfg.load_events_per_s // 100
                due = trio.current_time()
                while True:
                    ids = [f"s{rng.randrange(cfg.fake_actors)}" for _ in range(per_tick)]
                    for envelope in envelopes_for(
                        FAKE_NAMESPACE, (task_events.TaskOOM(container_id=i) for i in ids)
                    ):
                        fake.publish_envelope(envelope)
                    injected += per_tick
                    due = max(due + 0.01, trio.current_time())
                    await trio.sleep_until(due)

            async with trio.open_nursery() as nursery:
                for _ in range(cfg.load_workers):
                    nursery.start_soon(worker)
                nursery.start_soon(injector)
                await trio.sleep(0.2)
                ops = injected = 0
                load_began = time.perf_counter()
                status, pids = await _probe(tasks, cfg.load_seconds, rng)
                load_time = time.perf_counter() - load_began
                nursery.cancel_scope.cancel()
            progress.done(2 + cfg.load_seconds, "fake scale: round trips under load measured")
    return FakeScale(
        actors=cfg.fake_actors,
        create_seconds=created,
        rss_before_bytes=rss_before,
        rss_after_bytes=rss_after,
        bytes_per_actor=(rss_after - rss_before) / cfg.fake_actors,
        heap_bytes_per_actor=(heap_after - heap_before) / sample,
        heap_sample=sample,
        idle_status_ms=scaled(percentiles(idle_status), 1000),
        idle_pids_ms=scaled(percentiles(idle_pids), 1000),
        status_under_load_ms=scaled(percentiles(status), 1000),
        pids_under_load_ms=scaled(percentiles(pids), 1000),
        load_ops_per_s=ops / load_time,
        load_events_per_s=injected / load_time,
        load_description=(
            f"{cfg.load_ops_per_s:,} status(refresh=True) commands/s (1 RPC each) from "
            f"{cfg.load_workers} workers on random actors, plus {cfg.load_events_per_s:,} TaskOOM "
            "events/s to random actors"
        ),
    )


async def run_real(lab: Lab, cfg: Config, progress: Progress, *, quick: bool) -> RealScale:
    """Start the containers under one supervisor, restart the supervisor (containers keep
    running; the new one restores them), then watch it sit idle."""
    from supervisor import open_supervisor

    count = cfg.real_containers
    assert lab.rootfs is not None
    namespace = lab.namespace("scale")
    state_dir = lab.state_dir("scale")
    async with open_supervisor(lab.address, namespace, state_dir=state_dir) as first:
        gc.collect()
        rss_before = _env.rss_bytes()
        tracemalloc.start()
        heap_before = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        started_tasks = await start_sleepers(first, "r", count, str(lab.rootfs))
        started = time.perf_counter() - began
        gc.collect()
        heap_after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        await trio.sleep(cfg.quiesce_seconds)
        gc.collect()
        rss_after = _env.rss_bytes()
    progress.done(count * 0.1, f"{len(started_tasks)} real containers running")
    began = time.perf_counter()
    async with open_supervisor(lab.address, namespace, state_dir=state_dir) as client:
        restore_seconds = time.perf_counter() - began
        restore_rpcs = dict(client.statistics().rpc.calls)
        restored = client.statistics().actors
        tasks = [await (await client.load_container(t.container_id)).task() for t in started_tasks]
        await trio.sleep(cfg.quiesce_seconds)
        before = _env.sample(lab.daemon_pid)
        asleep = _env.wakeups()
        await trio.sleep(cfg.idle_seconds)
        woken = _env.wakeups_since(asleep)
        after = _env.sample(lab.daemon_pid)
        floor = await _env.wakeup_floor_ms()
        idle = _env.delta(before, after)
        progress.done(cfg.quiesce_seconds + cfg.idle_seconds, "idle CPU measured")
        await stop_sleepers(client, tasks)
        progress.done(count * 0.1, "real containers removed")
    wall = idle.wall or 1.0
    return RealScale(
        containers=len(tasks),
        reduced_for_quick=quick,
        start_seconds=started,
        rss_before_bytes=rss_before,
        rss_after_bytes=rss_after,
        bytes_per_container=(rss_after - rss_before) / max(1, len(tasks)),
        heap_bytes_per_container=(heap_after - heap_before) / max(1, len(tasks)),
        restored=restored,
        restore_seconds=restore_seconds,
        restore_rpcs=restore_rpcs,
        idle_seconds=idle.wall,
        idle_wakeups=woken,
        wakeup_floor_ms=floor,
        idle_cpu_pct=100 * idle.process / wall,
        idle_cpu_trio_pct=100 * idle.main_thread / wall,
        idle_cpu_threads_pct=100 * idle.other_threads / wall,
        containerd_idle_cpu_pct=100 * idle.daemon / wall,
        containerd_rss_bytes=_env.rss_bytes(lab.daemon_pid) if lab.daemon_pid else 0,
    )
