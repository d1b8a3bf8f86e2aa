"""Event fan-out: how many task events per second the router pushes to 1,000 actors and 10
subscribers (on the in-memory fake, protobuf decoding included), and how long an event takes
from containerd's publish to our Backend callback (on the real daemon).
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import msgspec
import trio

from actors import EventInfo, EventType, build_spec, open_client
from actors.containerd.pb.containerd.events import task_pb2 as task_events
from actors.testing import FakeContainerd, envelopes_for, open_fake_client

from ._lab import Lab
from ._probe import LatencyProbe
from ._profile import Profile, pyinstrument
from ._progress import Progress
from ._stats import Percentiles, Spread, percentiles, scaled, spread

FANOUT_NAMESPACE = "fanout"


class Config(msgspec.Struct, frozen=True, kw_only=True):
    actors: int
    subscribers: int
    events: int
    reps: int
    warmup_events: int
    latency_events: int


def config(quick: bool, *, smoke: bool = False) -> Config:
    """The run's sizes; ``smoke`` only checks the harness works (figures mean nothing)."""
    if smoke:
        return Config(
            actors=50, subscribers=3, events=2_000, reps=1, warmup_events=100, latency_events=5
        )
    if quick:
        return Config(
            actors=1000,
            subscribers=10,
            events=50_000,
            reps=3,
            warmup_events=5_000,
            latency_events=100,
        )
    return Config(
        actors=1000,
        subscribers=10,
        events=200_000,
        reps=5,
        warmup_events=10_000,
        latency_events=300,
    )


class FanoutPoint(msgspec.Struct, frozen=True, kw_only=True):
    subscribers: int
    events: int
    reps: int
    routed_per_s: Spread  # router -> actor -> Backend callback, every event
    subscriber_events_per_s: Spread  # every subscriber has every event
    deliveries_per_s: Spread  # subscriber_events_per_s x subscribers
    cpu_us_per_event: Spread
    lagged_subscribers: int


class _Counter:
    """A Backend that counts, and says when it has seen ``target`` events."""

    def __init__(self, target: int) -> None:
        self.calls = 0
        self.target = target
        self.reached = trio.Event()

    async def process_event(
        self, container_id: str, event_type: EventType, event_info: EventInfo
    ) -> None:
        self.calls += 1
        if self.calls >= self.target:
            self.reached.set()


async def _fanout_once(
    cfg: Config, subscribers: int, events: int, state_dir: str, *, profile_to: Path | None
) -> tuple[float, float, float, int, Profile | None]:
    """(seconds until routed, seconds until every subscriber has all, CPU s, lagged, profile)."""
    fake = FakeContainerd()
    backend = _Counter(events)
    async with open_fake_client(fake, FANOUT_NAMESPACE, backend, state_dir=state_dir) as client:
        spec = build_spec("/", ["sleep", "inf"])
        ids = [f"a{i}" for i in range(cfg.actors)]
        for container_id in ids:
            await client.new_container(container_id, spec)
        messages = (task_events.TaskOOM(container_id=ids[i % len(ids)]) for i in range(events))
        envelopes = envelopes_for(FANOUT_NAMESPACE, messages)
        received = [0] * subscribers
        lagged = 0
        all_received = trio.Event() if subscribers else None

        async def consume(k: int) -> None:
            nonlocal lagged
            subscription = client.events(buffer=events + 16)
            async with subscription:
                try:
                    # Batched delivery: one wake-up per burst of events.
                    while received[k] < events:
                        received[k] += len(await subscription.receive_batch())
                except Exception:
                    lagged += 1
            if all_received is not None and all(r >= events for r in received):
                all_received.set()

        gc.collect()
        profile: list[Profile] = []
        async with trio.open_nursery() as nursery:
            for k in range(subscribers):
                nursery.start_soon(consume, k)
            await trio.lowlevel.checkpoint()
            with pyinstrument(profile_to) if profile_to is not None else _nothing() as profile:
                cpu0 = time.process_time()
                began = time.perf_counter()
                for start in range(0, events, 1000):
                    for envelope in envelopes[start : start + 1000]:
                        fake.publish_envelope(envelope)
                    await trio.lowlevel.checkpoint()
                await backend.reached.wait()
                routed = time.perf_counter() - began
                if all_received is not None:
                    await all_received.wait()
                everything = time.perf_counter() - began
                cpu = time.process_time() - cpu0
    return routed, everything, cpu, lagged, (profile[0] if profile else None)


class _nothing:
    def __enter__(self) -> list[Profile]:
        return []

    def __exit__(self, *exc: object) -> None:
        return None


def estimate_fake(cfg: Config) -> float:
    return cfg.events / 15_000 * (2 * cfg.reps + 2)


def estimate_latency(cfg: Config) -> float:
    return cfg.latency_events * 0.01 + 2


async def run_fake(
    cfg: Config, progress: Progress, *, profile_dir: str | None
) -> tuple[list[FanoutPoint], Profile | None]:
    weight = cfg.events / 15_000
    variants = [cfg.subscribers, 0]
    points: list[FanoutPoint] = []
    profile: Profile | None = None
    with tempfile.TemporaryDirectory(prefix="cab-fanout-") as state_dir:
        await _fanout_once(cfg, cfg.subscribers, cfg.warmup_events, state_dir, profile_to=None)
        progress.done(weight, "fan-out warm-up done")
        for subscribers in variants:
            runs = []
            for rep in range(cfg.reps):
                routed, everything, cpu, lagged, _ = await _fanout_once(
                    cfg, subscribers, cfg.events, state_dir, profile_to=None
                )
                runs.append((routed, everything, cpu, lagged))
                progress.done(
                    weight,
                    f"fan-out {subscribers} subscribers rep {rep + 1}: "
                    f"{cfg.events / routed:,.0f} routed events/s",
                )
            points.append(
                FanoutPoint(
                    subscribers=subscribers,
                    events=cfg.events,
                    reps=cfg.reps,
                    routed_per_s=spread([cfg.events / r for r, _, _, _ in runs]),
                    subscriber_events_per_s=spread([cfg.events / e for _, e, _, _ in runs]),
                    deliveries_per_s=spread([subscribers * cfg.events / e for _, e, _, _ in runs]),
                    cpu_us_per_event=spread([c * 1e6 / cfg.events for _, _, c, _ in runs]),
                    lagged_subscribers=sum(lag for _, _, _, lag in runs),
                )
            )
        # One more run under pyinstrument (not counted): where the Trio thread spends its time.
        out = Path(profile_dir) / "profile-fanout.txt" if profile_dir is not None else None
        _, _, _, _, profile = await _fanout_once(
            cfg, cfg.subscribers, cfg.events, state_dir, profile_to=out
        )
        progress.done(weight, "fan-out profiled")
    return points, profile


async def run_latency(lab: Lab, cfg: Config, progress: Progress) -> Percentiles:
    """Publish TaskOOM events one at a time through containerd; time to the Backend callback."""
    probe = LatencyProbe()
    namespace = lab.namespace("events")
    latencies: list[float] = []
    async with (
        open_client(lab.address, namespace, probe, state_dir=lab.state_dir("events")) as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(probe.consume, client.events(buffer=1024))
        assert lab.rootfs is not None
        spec = build_spec(lab.rootfs, ["/bin/true"])
        ids = [f"ev-{i}" for i in range(8)]
        for container_id in ids:
            await client.new_container(container_id, spec)
        remote = client._remote
        for i in range(cfg.latency_events + 10):
            container_id = ids[i % len(ids)]
            payload = task_events.TaskOOM(container_id=container_id).SerializeToString()
            probe.clear()
            await remote.events_publish("/tasks/oom", "containerd.events.TaskOOM", payload)
            with trio.fail_after(10):
                await probe.wait_for(container_id, EventType.OOM, "")
            if i >= 10:  # the first few warm up the path
                latencies += probe.latencies(EventType.OOM)
            await trio.sleep(0.002)
        for container_id in ids:
            await (await client.load_container(container_id)).delete()
        nursery.cancel_scope.cancel()
    progress.done(cfg.latency_events * 0.01 + 2, "publish-to-callback latency measured")
    return scaled(percentiles(latencies), 1000)
