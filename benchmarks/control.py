"""Exec and control operations on running containers.

* exec: add + start + wait + delete of ``/bin/true`` in 4 running ``sleep`` containers, at
  concurrency 1 and 8, for ours, the stateless client and ``ctr task exec``;
* polling: stats (Tasks.Metrics), pids (Tasks.ListPids), status from the actor's state and
  status re-read from containerd (Tasks.Get), across 100 running containers at concurrency 16,
  for ours and the stateless client (which re-reads container and task before each call).
"""

from __future__ import annotations

import collections
import math
import signal
from collections.abc import Awaitable, Callable

import msgspec
import trio

from actors import Client, Task, build_spec, open_client
from actors.core.spec import encode_process

from ._lab import Lab
from ._progress import Progress
from ._stats import Percentiles, Spread, percentiles, scaled, spread
from .lifecycle import Batch, run_batch
from .stateless import RPCS_PER_EXEC, StatelessClient, open_stateless

SLEEPER = ["sleep", "3600"]
CTR_EXEC_REFERENCE = "not measured (ctr's RPCs are not visible to our counters)"


class Config(msgspec.Struct, frozen=True, kw_only=True):
    exec_concurrency: list[int]
    exec_reps: int
    execs: int
    targets: int
    poll_containers: int
    poll_rounds: int
    poll_reps: int
    poll_concurrency: int


def config(quick: bool, *, smoke: bool = False) -> Config:
    """The run's sizes; ``smoke`` only checks the harness works (figures mean nothing)."""
    if smoke:
        return Config(
            exec_concurrency=[1, 2],
            exec_reps=1,
            execs=3,
            targets=2,
            poll_containers=3,
            poll_rounds=1,
            poll_reps=1,
            poll_concurrency=2,
        )
    if quick:
        return Config(
            exec_concurrency=[1, 8],
            exec_reps=3,
            execs=16,
            targets=4,
            poll_containers=100,
            poll_rounds=2,
            poll_reps=3,
            poll_concurrency=16,
        )
    return Config(
        exec_concurrency=[1, 8],
        exec_reps=5,
        execs=48,
        targets=4,
        poll_containers=100,
        poll_rounds=5,
        poll_reps=5,
        poll_concurrency=16,
    )


class OpPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One operation by one client at one concurrency, over every repetition."""

    op: str
    mode: str
    concurrency: int
    ops_per_rep: int
    reps: int
    throughput: Spread  # operations per second
    latency_ms: Percentiles
    rpcs_per_op: float | None
    rpcs_source: str
    rpc_breakdown: dict[str, float]
    client_cpu_ms: Spread
    client_cpu_source: str
    failures: int
    failure_samples: list[str]


class Result(msgspec.Struct, frozen=True, kw_only=True):
    config: Config
    exec: list[OpPoint]
    polling: list[OpPoint]


Runner = Callable[[str], Awaitable[object]]


def _index(item: str) -> int:
    return int(item.rsplit("-", 1)[1])


async def start_sleepers(client: Client, prefix: str, count: int, rootfs: str) -> list[Task]:
    spec = build_spec(rootfs, SLEEPER)
    tasks: list[Task | None] = [None] * count
    limiter = trio.CapacityLimiter(16)

    async def one(i: int) -> None:
        async with limiter:
            container = await client.new_container(f"{prefix}-{i}", spec)
            tasks[i] = await container.start()

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return [t for t in tasks if t is not None]


async def stop_sleepers(client: Client, tasks: list[Task]) -> None:
    limiter = trio.CapacityLimiter(16)

    async def one(task: Task) -> None:
        async with limiter:
            await task.force_delete()
            container = await client.load_container(task.container_id)
            await container.delete()

    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(one, task)


async def _start_plain(client: StatelessClient, ids: list[str], rootfs: str) -> None:
    spec = build_spec(rootfs, SLEEPER)
    for container_id in ids:
        await client.create(container_id, spec)
        await client.start(container_id)


async def _stop_plain(client: StatelessClient, ids: list[str]) -> None:
    for container_id in ids:
        await client.remote.tasks_kill(container_id, signal.SIGKILL, all=True)
        await client.wait(container_id)
        await client.delete_task(container_id)
        await client.delete(container_id)


def _point(
    op: str,
    mode: str,
    concurrency: int,
    batches: list[Batch],
    *,
    rpcs_source: str,
) -> OpPoint:
    latencies = [x for b in batches for x in b.latencies]
    failures = [f for b in batches for f in b.failures]
    done = sum(len(b.latencies) for b in batches)
    attempted = done + len(failures)
    breakdown: collections.Counter[str] = collections.Counter()
    for b in batches:
        breakdown.update(b.rpcs)
    measured = mode != "ctr"
    cpu = spread(
        [
            (b.cpu.process if measured else b.cpu.children) * 1000 / len(b.latencies)
            for b in batches
            if b.latencies
        ]
    )
    return OpPoint(
        op=op,
        mode=mode,
        concurrency=concurrency,
        ops_per_rep=len(batches[0].latencies) + len(batches[0].failures) if batches else 0,
        reps=len(batches),
        throughput=spread([len(b.latencies) / b.cpu.wall for b in batches if b.cpu.wall]),
        latency_ms=scaled(percentiles(latencies), 1000),
        rpcs_per_op=(sum(breakdown.values()) / attempted if attempted else math.nan)
        if measured
        else None,
        rpcs_source=rpcs_source,
        rpc_breakdown={k: v / done for k, v in sorted(breakdown.items())} if done else {},
        client_cpu_ms=cpu,
        client_cpu_source="this process (time.process_time)"
        if measured
        else "ctr child processes (RUSAGE_CHILDREN)",
        failures=len(failures),
        failure_samples=failures[:3],
    )


def estimate(cfg: Config) -> float:
    exec_weight = cfg.execs * 0.06
    return (
        15
        + cfg.poll_containers * 0.15
        + len(cfg.exec_concurrency) * cfg.exec_reps * 3 * exec_weight
        + 4 * 2 * cfg.poll_reps * 2.0
    )


async def run(lab: Lab, cfg: Config, progress: Progress) -> Result:
    assert lab.rootfs is not None
    rootfs = str(lab.rootfs)
    exec_weight = cfg.execs * 0.06
    exec_points = await _exec_phase(lab, cfg, progress, rootfs, exec_weight)
    poll_points = await _poll_phase(lab, cfg, progress, rootfs)
    return Result(config=cfg, exec=exec_points, polling=poll_points)


async def _exec_phase(
    lab: Lab, cfg: Config, progress: Progress, rootfs: str, weight: float
) -> list[OpPoint]:
    pid = lab.daemon_pid
    batches: dict[tuple[str, int], list[Batch]] = collections.defaultdict(list)
    plain_ids = [f"xs-{i}" for i in range(cfg.targets)]
    ctr_ids = [f"xc-{i}" for i in range(cfg.targets)]
    async with (
        open_client(
            lab.address, lab.namespace("exec-ours"), state_dir=lab.state_dir("exec-ours")
        ) as client,
        open_stateless(
            lab.address, lab.namespace("exec-stateless"), lab.state_dir("exec-stateless")
        ) as plain,
        open_stateless(
            lab.address, lab.namespace("exec-ctr"), lab.state_dir("exec-ctr")
        ) as ctr_owner,
    ):
        targets = await start_sleepers(client, "xo", cfg.targets, rootfs)
        await _start_plain(plain, plain_ids, rootfs)
        await _start_plain(ctr_owner, ctr_ids, rootfs)
        container = await client.load_container(targets[0].container_id)
        process_spec = container.exec_spec(["/bin/true"])
        process_bytes = encode_process(process_spec)
        ctr_base = ["ctr", "-a", lab.address, "-n", lab.namespace("exec-ctr"), "task", "exec"]
        fifo_dir = lab.fifo_dir()

        async def ours(exec_id: str) -> None:
            task = targets[_index(exec_id) % len(targets)]
            process = await task.exec(exec_id, process_spec)
            await process.wait()
            await process.delete()

        async def stateless(exec_id: str) -> None:
            container_id = plain_ids[_index(exec_id) % len(plain_ids)]
            await plain.exec(container_id, exec_id, process_bytes)
            await plain.wait(container_id, exec_id)
            await plain.clean_exec(container_id, exec_id)

        async def ctr(exec_id: str) -> None:
            container_id = ctr_ids[_index(exec_id) % len(ctr_ids)]
            command = [*ctr_base, "--exec-id", exec_id, "--fifo-dir", fifo_dir, container_id]
            result = await trio.run_process(
                [*command, "/bin/true"],
                stdin=b"",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(result.stderr.decode(errors="replace")[:200])

        runners: dict[str, tuple[Runner, Callable[[], dict[str, int]] | None]] = {
            "ours": (ours, lambda: dict(client.statistics().rpc.calls)),
            "stateless": (stateless, lambda: dict(plain.remote.statistics().calls)),
            "ctr": (ctr, None),
        }
        progress.done(15, f"exec targets up ({cfg.targets} per client)")
        modes = list(runners)
        for mode in modes:  # warm-up
            runner, _ = runners[mode]
            await run_batch(
                runner, [f"w{mode[:2]}-{i}" for i in range(4)], 2, daemon_pid=pid, rpc_calls=None
            )
        for c in cfg.exec_concurrency:
            for rep in range(cfg.exec_reps):
                for mode in modes[rep % 3 :] + modes[: rep % 3]:
                    runner, calls = runners[mode]
                    ids = [f"e{c}{mode[:2]}{rep}-{i}" for i in range(cfg.execs)]
                    batch = await run_batch(runner, ids, c, daemon_pid=pid, rpc_calls=calls)
                    batches[(mode, c)].append(batch)
                    rate = len(batch.latencies) / batch.cpu.wall if batch.cpu.wall else 0
                    progress.done(weight, f"exec c={c} {mode} rep {rep + 1}: {rate:.1f}/s")
        await stop_sleepers(client, targets)
        await _stop_plain(plain, plain_ids)
        await _stop_plain(ctr_owner, ctr_ids)
    sources = {
        "ours": "measured (client RPC counters)",
        "stateless": f"measured (client RPC counters; {RPCS_PER_EXEC} by design)",
        "ctr": CTR_EXEC_REFERENCE,
    }
    return [
        _point("exec", mode, c, batches[(mode, c)], rpcs_source=sources[mode])
        for c in cfg.exec_concurrency
        for mode in ("ours", "stateless", "ctr")
    ]


async def _poll_phase(lab: Lab, cfg: Config, progress: Progress, rootfs: str) -> list[OpPoint]:
    pid = lab.daemon_pid
    namespace = lab.namespace("poll")
    batches: dict[tuple[str, str], list[Batch]] = collections.defaultdict(list)
    async with open_client(lab.address, namespace, state_dir=lab.state_dir("poll")) as client:
        tasks = await start_sleepers(client, "p", cfg.poll_containers, rootfs)
        by_id = {t.container_id: t for t in tasks}
        progress.done(cfg.poll_containers * 0.15, f"{len(tasks)} containers running for polling")
        async with open_stateless(lab.address, namespace, lab.state_dir("poll-stateless")) as plain:

            def ours(op: str) -> Runner:
                async def call(item: str) -> object:
                    task = by_id[item.rsplit("/", 1)[0]]
                    if op == "stats":
                        return await task.stats()
                    if op == "pids":
                        return await task.pids()
                    return await task.status(refresh=op == "status-refresh")

                return call

            def stateless(op: str) -> Runner:
                async def call(item: str) -> object:
                    container_id = item.rsplit("/", 1)[0]
                    if op == "stats":
                        return await plain.stats(container_id)
                    if op == "pids":
                        return await plain.pids(container_id)
                    return await plain.status(container_id)

                return call

            ops = ["stats", "pids", "status", "status-refresh"]
            for rep in range(cfg.poll_reps):
                for op in ops:
                    for mode in ("ours", "stateless") if rep % 2 == 0 else ("stateless", "ours"):
                        if mode == "ours":
                            runner: Runner = ours(op)
                            calls = lambda: dict(client.statistics().rpc.calls)  # noqa: E731
                        else:
                            runner = stateless(op)
                            calls = lambda: dict(plain.remote.statistics().calls)  # noqa: E731
                        items = [
                            f"{t.container_id}/{r}" for r in range(cfg.poll_rounds) for t in tasks
                        ]
                        batch = await run_batch(
                            runner, items, cfg.poll_concurrency, daemon_pid=pid, rpc_calls=calls
                        )
                        batches[(op, mode)].append(batch)
                        rate = len(batch.latencies) / batch.cpu.wall if batch.cpu.wall else 0
                        progress.done(2.0, f"poll {op} {mode} rep {rep + 1}: {rate:.0f} ops/s")
        await stop_sleepers(client, tasks)
    points = []
    for op in ("stats", "pids", "status", "status-refresh"):
        for mode in ("ours", "stateless"):
            source = "measured (client RPC counters)"
            points.append(
                _point(op, mode, cfg.poll_concurrency, batches[(op, mode)], rpcs_source=source)
            )
    return points
