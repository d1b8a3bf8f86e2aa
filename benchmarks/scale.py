"""Scale: 10,000 actors on the fake (memory per actor, command round trips under load).

Real running containers under one supervisor are in :mod:`benchmarks.density`.
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
from ._progress import Progress
from ._stats import Percentiles, percentiles, scaled

FAKE_NAMESPACE = "scale"


class Config(msgspec.Struct, frozen=True, kw_only=True):
    fake_actors: int
    load_seconds: float
    load_workers: int
    load_ops_per_s: int
    load_events_per_s: int


def config(quick: bool, *, smoke: bool = False) -> Config:
    """The run's sizes; ``smoke`` only checks the harness works (figures mean nothing)."""
    if smoke:
        return Config(
            fake_actors=200,
            load_seconds=0.5,
            load_workers=4,
            load_ops_per_s=200,
            load_events_per_s=1_000,
        )
    return Config(
        fake_actors=10_000,
        load_seconds=3.0 if quick else 10.0,
        load_workers=64,
        load_ops_per_s=2_000,
        load_events_per_s=5_000,
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


class Result(msgspec.Struct, frozen=True, kw_only=True):
    config: Config
    fake: FakeScale | None
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
