"""Everything a run found, as JSON (every figure), markdown (the summary) and PNG plots.

Goals are judged here, each with the figure it rests on; a missed goal says by how much and
what the measurements (CPU split, daemon CPU, profiles) say limits it. A figure that could
not be measured says so instead of being left out.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from . import control, density, fanout, images, lifecycle, scale
from ._profile import Profile
from ._stats import Percentiles, Spread, spread
from .density import IdleResult, LifecycleComparison
from .peers import PeersResult

SCHEMA = 1


class Goal(msgspec.Struct, frozen=True, kw_only=True):
    goal: str
    target: str
    measured: str
    met: bool | None  # None: could not be measured
    detail: str = ""


class Collected(msgspec.Struct, kw_only=True):
    """Filled in as phases finish, so an interrupted run still reports what it measured."""

    schema: int = SCHEMA
    command: str
    quick: bool
    started_at: str
    smoke: bool = False
    duration_s: float = 0.0
    interrupted: bool = False
    machine: dict[str, Any]
    versions: dict[str, str]
    containerd_version: str = "not measured (no private containerd was started)"
    background_cores: list[float] = msgspec.field(default_factory=list)
    phase_load: dict[str, list[float]] = msgspec.field(default_factory=dict)
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    lifecycle: lifecycle.Result | None = None
    control: control.Result | None = None
    fanout_fake: list[fanout.FanoutPoint] | None = None
    fanout_profile: Profile | None = None
    event_latency: Percentiles | None = None
    scale_fake: scale.FakeScale | None = None
    images: images.Result | None = None
    density: list[IdleResult] | None = None
    shim_groups: LifecycleComparison | None = None
    peers: PeersResult | None = None
    goals: list[Goal] = msgspec.field(default_factory=list)
    not_measured: list[str] = msgspec.field(default_factory=list)
    leftovers: list[str] = msgspec.field(default_factory=list)


# -- helpers --------------------------------------------------------------------------------


def _ok(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _num(value: float | None, digits: int = 1) -> str:
    if not _ok(value):
        return "n/a"
    assert value is not None
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _spread(s: Spread | None, digits: int = 1) -> str:
    if s is None or s.n == 0:
        return "n/a"
    if s.n == 1 or s.min == s.max:
        return _num(s.median, digits)
    return f"{_num(s.median, digits)} [{_num(s.min, digits)}-{_num(s.max, digits)}]"


def _pct(p: Percentiles | None, digits: int = 0) -> str:
    if p is None or p.n == 0:
        return "n/a"
    return f"{_num(p.p50, digits)} / {_num(p.p90, digits)} / {_num(p.p99, digits)}"


def _point(result: lifecycle.Result | None, mode: str, c: int) -> lifecycle.Point | None:
    if result is None:
        return None
    for point in result.points:
        if point.mode == mode and point.concurrency == c:
            return point
    return None


def _ratio_spread(a: Sequence[float], b: Sequence[float]) -> Spread:
    return spread([x / y for x, y in zip(a, b, strict=False) if y])


def _load(values: Any) -> str:
    return ", ".join(f"{x:.2f}" for x in values) if values else "n/a"


def _mib(value: float) -> str:
    return f"{value / (1 << 20):.1f} MiB"


def _top(profile: Profile | None, count: int = 4) -> str:
    if profile is None:
        return "no profile (install py-spy / pyinstrument, or drop --no-profile)"
    spots = ", ".join(f"{h.where} {100 * h.share:.0f}%" for h in profile.hotspots[:count])
    return f"{profile.tool} hot spots: {spots}"


# -- goals ----------------------------------------------------------------------------------


def judge(run: Collected) -> list[Goal]:
    goals: list[Goal] = []
    life = run.lifecycle
    ours_points = [p for p in (life.points if life else []) if p.mode == "ours"]

    # 1. RPCs per lifecycle.
    if ours_points:
        counts = sorted({round(p.rpcs_per_lifecycle or math.nan, 2) for p in ours_points})
        stateless = _point(life, "stateless", 16) or _point(life, "stateless", 1)
        met = all(p.rpcs_per_lifecycle == 5 for p in ours_points)
        goals.append(
            Goal(
                goal="RPCs per lifecycle",
                target="5",
                measured=", ".join(_num(c, 2) for c in counts) + " (every concurrency)",
                met=met,
                detail=f"stateless {_num(stateless.rpcs_per_lifecycle if stateless else None)}"
                f" measured; ctr {lifecycle.CTR_REFERENCE_RPCS} (reference, not measured)",
            )
        )
    else:
        goals.append(Goal(goal="RPCs per lifecycle", target="5", measured="not measured", met=None))

    # 2. Throughput at concurrency 16 vs ctr.
    ours16, ctr16 = _point(life, "ours", 16), _point(life, "ctr", 16)
    if ours16 and ctr16 and ctr16.throughput.median > 0:
        ratio = _ratio_spread(ours16.throughput_per_rep, ctr16.throughput_per_rep)
        met = ratio.median >= 1.5
        detail = (
            f"ours {_spread(ours16.throughput)}/s vs ctr {_spread(ctr16.throughput)}/s "
            "(same run, interleaved)"
        )
        if not met:
            detail += "; " + _throughput_limit(ours16, run.background_cores)
        c16 = _point_caps(ours16, run.background_cores)
        fraction = ours16.throughput.median / c16.daemon_cap if _ok(c16.daemon_cap) else math.nan
        goals.append(
            Goal(
                goal="Lifecycle throughput at concurrency 16",
                target="≥ 1.5x ctr",
                measured=f"{_spread(ratio, 2)}x ctr; {_num(fraction, 2)} of the daemon-side cap",
                met=met,
                detail=detail,
            )
        )
        goals.append(
            Goal(
                goal="Throughput at concurrency 16 as a fraction of the daemon-side cap",
                target="≥ 0.9",
                measured=_num(fraction, 2),
                met=fraction >= 0.9 if _ok(fraction) else None,
                detail=(
                    f"ours {_num(ours16.throughput.median)}/s; the daemon side (containerd, "
                    f"shims, runc, kernel: {_num(c16.daemon_side_ms, 1)} ms of machine CPU per "
                    f"lifecycle, measured in this run) alone allows "
                    f"{_num(c16.daemon_cap, 1)}/s on the {_num(c16.free_cores, 2)} cores other "
                    f"users left; with our client's {_num(c16.client_ms, 1)} ms added, "
                    f"{_num(c16.cap, 1)}/s. Ratio to ctr in the same run: {_spread(ratio, 2)}x"
                ),
            )
        )
    else:
        goals.append(
            Goal(
                goal="Lifecycle throughput at concurrency 16",
                target="≥ 1.5x ctr",
                measured="not measured",
                met=None,
            )
        )

    # 3. Sequential latency vs ctr.
    ours1, ctr1 = _point(life, "ours", 1), _point(life, "ctr", 1)
    if ours1 and ctr1 and ours1.latency_ms.n and ctr1.latency_ms.n:
        met = ours1.latency_ms.p50 <= ctr1.latency_ms.p50
        detail = f"ours {_num(ours1.latency_ms.p50)} ms vs ctr {_num(ctr1.latency_ms.p50)} ms p50"
        if not met:
            over = ours1.latency_ms.p50 / ctr1.latency_ms.p50 - 1
            detail += f"; {100 * over:.0f}% slower. " + _throughput_limit(
                ours1, run.background_cores
            )
        goals.append(
            Goal(
                goal="Sequential lifecycle latency (p50, concurrency 1)",
                target="≤ ctr",
                measured=f"{_num(ours1.latency_ms.p50 / ctr1.latency_ms.p50, 2)}x ctr",
                met=met,
                detail=detail,
            )
        )
    else:
        goals.append(
            Goal(
                goal="Sequential lifecycle latency (p50, concurrency 1)",
                target="≤ ctr",
                measured="not measured",
                met=None,
            )
        )

    # 4. Client CPU per lifecycle.
    if ours16 or ours1:
        point = ours16 or ours1
        assert point is not None
        cpu = point.client_cpu_ms.median
        met = cpu < 5
        detail = f"at concurrency {point.concurrency}; " + ", ".join(
            f"c={p.concurrency}: {_num(p.client_cpu_ms.median, 2)} ms" for p in ours_points
        )
        if not met:
            main = point.trio_thread_cpu_ms.median if point.trio_thread_cpu_ms else math.nan
            threads = (
                point.bridge_threads_cpu_ms.median if point.bridge_threads_cpu_ms else math.nan
            )
            rpcs = point.rpcs_per_lifecycle or 5
            detail += (
                f". Missed by {_num(cpu - 5, 2)} ms ({_num(cpu / 5, 1)}x). Split: Trio thread "
                f"{_num(main, 2)} ms (actors, router, protobuf decode of ~4 events), asyncio "
                f"bridge thread {_num(threads, 2)} ms (grpclib + h2 for {_num(rpcs, 0)} RPCs and "
                f"the event stream, ≈ {_num(threads / (rpcs + 4), 2)} ms per message). "
                + _top(life.profile if life else None)
            )
        goals.append(
            Goal(
                goal="Client CPU per lifecycle",
                target="< 5 ms",
                measured=f"{_spread(point.client_cpu_ms, 2)} ms",
                met=met,
                detail=detail,
            )
        )
    else:
        goals.append(
            Goal(
                goal="Client CPU per lifecycle", target="< 5 ms", measured="not measured", met=None
            )
        )

    # 5. Idle CPU with real containers, and their restore.
    idle = run.density[0] if run.density else None
    if idle is not None:
        met = idle.idle_cpu_pct < 1
        detail = (
            f"{idle.containers} running containers ({idle.policy} shims) under a supervisor "
            f"that restored them, {idle.idle_seconds:.0f} s window, {idle.idle_wakeups} thread "
            f"wakeup(s) in it (the one that ends the window included); containerd itself "
            f"{idle.containerd_idle_cpu_pct:.2f}%. For scale: on this machine a minimal Python "
            f"process sleeping 1 s in epoll was charged {_num(idle.wakeup_floor_ms, 1)} ms of "
            "CPU for its one wakeup"
        )
        goals.append(
            Goal(
                goal="Idle CPU of our process with running containers",
                target=f"< 1 % of a core ({idle.containers} containers)",
                measured=f"{idle.idle_cpu_pct:.3f} %",
                met=met,
                detail=detail,
            )
        )
        restore_rpcs = sum(
            v for k, v in idle.restore_rpcs.items() if k in ("Containers.List", "Tasks.List")
        )
        goals.append(
            Goal(
                goal="Restoring every container: RPCs",
                target="2-4",
                measured=f"{restore_rpcs} ({idle.restored} containers)",
                met=2 <= restore_rpcs <= 4,
                detail="a new supervisor sent "
                + ", ".join(f"{k} {v}" for k, v in sorted(idle.restore_rpcs.items()))
                + f" before it was ready (the event subscription and its marker included), in "
                f"{idle.restore_seconds:.2f} s",
            )
        )
    else:
        goals.append(
            Goal(
                goal="Idle CPU of our process with running containers",
                target="< 1 % of a core",
                measured="not measured",
                met=None,
            )
        )

    # 5b. Shim groups against one shim per container.
    goals += _groups_goals(run)

    # 6. Routed events per second on the fake.
    points = run.fanout_fake
    if points:
        profile = run.fanout_profile
        main_point = next((p for p in points if p.subscribers > 0), points[0])
        bare = next((p for p in points if p.subscribers == 0), None)
        rate = main_point.routed_per_s.median
        met = rate >= 50_000
        detail = (
            f"{main_point.subscribers} subscribers attached; every subscriber had every event at "
            f"{_spread(main_point.subscriber_events_per_s, 0)}/s "
            f"({_spread(main_point.deliveries_per_s, 0)} deliveries/s)"
        )
        if bare is not None:
            detail += f"; without subscribers {_spread(bare.routed_per_s, 0)}/s"
        if not met:
            detail += (
                f". Missed by {100 * (1 - rate / 50_000):.0f}%: "
                f"{_num(main_point.cpu_us_per_event.median, 1)} µs of CPU per event, all in the "
                "Trio thread. " + _fanout_limit(profile)
            )
        goals.append(
            Goal(
                goal="Routed events/s on the fake (1,000 actors, decoding included)",
                target="≥ 50,000",
                measured=_spread(main_point.routed_per_s, 0),
                met=met,
                detail=detail,
            )
        )
    else:
        goals.append(
            Goal(
                goal="Routed events/s on the fake (1,000 actors, decoding included)",
                target="≥ 50,000",
                measured="not measured",
                met=None,
            )
        )
    return goals


def _groups_goals(run: Collected) -> list[Goal]:
    comparison = run.shim_groups
    per = _gpoint(comparison, "per-container", 16)
    grouped = _gpoint(comparison, "groups", 16)
    if per is None or grouped is None:
        return [
            Goal(
                goal="Shim groups: throughput at 16 vs one shim per container",
                target="≥ 1.0x",
                measured="not measured",
                met=None,
            )
        ]
    ratio = _ratio_spread(grouped.throughput_per_rep, per.throughput_per_rep)
    cpu = grouped.machine_cpu_ms.median / per.machine_cpu_ms.median
    detail = (
        f"groups {_spread(grouped.throughput)}/s vs per-container {_spread(per.throughput)}/s "
        f"(interleaved); machine CPU per lifecycle {_num(grouped.machine_cpu_ms.median)} vs "
        f"{_num(per.machine_cpu_ms.median)} ms ({_num(cpu, 2)}x); "
        f"{grouped.shims_started} shims started for {_lifecycles(grouped)} "
        f"grouped lifecycles, {grouped.create_retries} Tasks.Create repeated"
    )
    memory = {r.policy: r for r in run.density or []}
    if "groups" in memory and "per-container" in memory:
        g, p = memory["groups"], memory["per-container"]
        detail += (
            f"; memory per running container (our PSS + shims' PSS): "
            f"{_kib(g.pss_per_container_bytes)} vs {_kib(p.pss_per_container_bytes)}"
        )
    return [
        Goal(
            goal="Shim groups: throughput at 16 vs one shim per container",
            target="≥ 1.0x",
            measured=f"{_spread(ratio, 2)}x",
            met=ratio.median >= 1.0,
            detail=detail,
        )
    ]


def _lifecycles(point: density.LifecyclePoint) -> int:
    return point.latency_ms.n + point.failures


def _gpoint(
    comparison: density.LifecycleComparison | None, policy: str, c: int
) -> density.LifecyclePoint | None:
    if comparison is None:
        return None
    return next((p for p in comparison.points if p.policy == policy and p.concurrency == c), None)


def _kib(value: float) -> str:
    return f"{value / 1024:,.0f} KiB" if _ok(value) else "n/a"


def _background(samples: Sequence[float]) -> float:
    return sum(samples) / len(samples) if samples else math.nan


class Caps(msgspec.Struct, frozen=True, kw_only=True):
    """What the machine's CPU allows, per lifecycle, from one measured point."""

    free_cores: float
    others_cores: float
    ours_total_ms: float  # machine CPU per lifecycle minus other users' background share
    client_ms: float
    daemon_side_ms: float  # containerd, shims, runc, kernel
    daemon_cap: float  # lifecycles/s the daemon side alone allows on the free cores
    cap: float  # ... with our client's CPU added


def caps(machine_ms: float, client_ms: float, rate: float, background: Sequence[float]) -> Caps:
    ncpu = os.cpu_count() or 1
    others = _background(background)
    free = ncpu - others if _ok(others) else float(ncpu)
    # What the other users of this shared machine burned meanwhile, per lifecycle.
    theirs = others * 1000 / rate if _ok(others) and rate else 0.0
    ours_total = machine_ms - theirs
    daemon_side = ours_total - client_ms
    return Caps(
        free_cores=free,
        others_cores=others,
        ours_total_ms=ours_total,
        client_ms=client_ms,
        daemon_side_ms=daemon_side,
        daemon_cap=1000 * free / daemon_side if daemon_side > 0 else math.nan,
        cap=1000 * free / ours_total if ours_total > 0 else math.nan,
    )


def _point_caps(point: lifecycle.Point, background: Sequence[float]) -> Caps:
    return caps(
        point.machine_cpu_ms.median,
        point.client_cpu_ms.median,
        point.throughput.median,
        background,
    )


def _throughput_limit(point: lifecycle.Point, background: Sequence[float]) -> str:
    ncpu = os.cpu_count() or 1
    c = _point_caps(point, background)
    return (
        f"limit: CPU. The machine was {_num(point.machine_busy_pct.median, 0)}% busy on {ncpu} "
        f"cores, {_num(c.others_cores, 2)} cores of it other users' background load (sampled "
        f"while idle before and after). Per lifecycle, {_num(c.ours_total_ms, 1)} ms of machine "
        f"CPU is ours: our client {_num(c.client_ms, 1)} ms, the daemon side "
        f"{_num(c.daemon_side_ms, 1)} ms (containerd {_num(point.containerd_cpu_ms.median, 1)} "
        f"ms, then shim, runc, kernel). On the {_num(c.free_cores, 2)} cores left, the daemon "
        f"side alone caps any client near {_num(c.daemon_cap, 0)}/s, and with our client near "
        f"{_num(c.cap, 0)}/s"
    )


def _fanout_limit(profile: Profile | None) -> str:
    if profile is None:
        return "No profile taken."
    groups = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(profile.groups.items())[:6])
    return f"Time by Trio task (pyinstrument): {groups}. " + _top(profile, 5)


# -- markdown -------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def readme_snippet(run: Collected) -> list[str]:
    """The short table for the top-level README, with the command that produced it."""
    life = run.lifecycle
    lines = [
        f"Measured with `{run.command}` on {run.started_at[:10]} "
        f"({run.machine.get('cpus')} CPUs, containerd {run.containerd_version.split()[0]}):",
        "",
    ]
    rows = []
    for mode, label in (
        ("ours", "containerd-actors"),
        ("stateless", "stateless client"),
        ("ctr", "`ctr run --rm`"),
    ):
        p1, p16 = _point(life, mode, 1), _point(life, mode, 16)
        rpcs = p16 or p1
        rows.append(
            [
                label,
                _num(rpcs.rpcs_per_lifecycle, 0) + (" (reference)" if mode == "ctr" else "")
                if rpcs
                else "n/a",
                _num(p1.latency_ms.p50, 0) if p1 else "n/a",
                _num(p16.throughput.median, 1) if p16 else "n/a",
                _num(p16.client_cpu_ms.median, 1) if p16 else "n/a",
            ]
        )
    lines += _table(
        ["client", "RPCs/lifecycle", "sequential p50 ms", "lifecycles/s at 16", "client CPU ms"],
        rows,
    )
    return lines


def markdown(run: Collected) -> str:
    out: list[str] = []
    mode = (
        "smoke (harness check only: figures mean nothing)"
        if run.smoke
        else ("quick" if run.quick else "full")
    )
    out.append(f"# Benchmark results ({mode} mode)")
    out.append("")
    out.append(
        f"- command: `{run.command}`; started {run.started_at}, took "
        f"{run.duration_s / 60:.1f} min" + (" — **interrupted**" if run.interrupted else "")
    )
    m = run.machine
    out.append(
        f"- machine: {m.get('cpus')} x {m.get('cpu_model')}, "
        f"{int(m.get('memory_bytes', 0)) / (1 << 30):.0f} GiB, {m.get('os')}, kernel "
        f"{m.get('kernel')}, cgroup {m.get('cgroup')}; load average (1, 5, 15 min) at start "
        f"{_load(m.get('loadavg_at_start'))}, at end {_load(m.get('loadavg_at_end'))} "
        "(a shared machine: other users' load shows up in every wall-clock figure)"
    )
    v = run.versions
    out.append(
        f"- containerd {run.containerd_version}; runc: {v.get('runc')}; Python "
        f"{m.get('python')}, trio {v.get('trio')}, grpclib {v.get('grpclib')}, protobuf "
        f"{v.get('protobuf')}"
    )
    if run.phase_load:
        out.append(
            "- 1-minute load average when each phase began and ended: "
            + "; ".join(f"{k} {v[0]:.1f} → {v[-1]:.1f}" for k, v in run.phase_load.items())
        )
    if run.background_cores:
        out.append(
            "- other users' background load, sampled while we sat idle before and after the "
            "real-daemon phases: " + ", ".join(f"{c:.2f}" for c in run.background_cores) + " cores"
        )
    out.append(
        "- medians of the repetitions with [min-max]; latency percentiles pooled over "
        "repetitions; ratios computed per repetition (clients interleaved in each)."
    )
    out.append("")
    out.append("## Goals")
    out.append("")
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    out += _table(
        ["goal", "target", "measured", "verdict"],
        [[g.goal, g.target, g.measured, verdict[g.met]] for g in run.goals],
    )
    out.append("")
    for g in run.goals:
        if g.detail:
            out.append(f"- **{g.goal}** ({verdict[g.met]}): {g.detail}")
    out.append("")

    life = run.lifecycle
    if life is not None:
        cfg = life.config
        out.append(
            "## Lifecycle (busybox `true`: create, start, exit, delete task, delete container)"
        )
        out.append("")
        out.append(
            f"{cfg.reps} repetitions per point after {cfg.warmup} warm-up lifecycles per "
            "client; lifecycles per repetition: "
            + ", ".join(f"{cfg.lifecycles(c)} at c={c}" for c in cfg.concurrency)
            + "."
        )
        out.append("")
        rows = []
        for p in life.points:
            rows.append(
                [
                    str(p.concurrency),
                    p.mode,
                    _spread(p.throughput),
                    _pct(p.latency_ms),
                    _num(p.rpcs_per_lifecycle, 1) + ("*" if p.mode == "ctr" else ""),
                    _spread(p.client_cpu_ms, 2) + ("†" if p.mode == "ctr" else ""),
                    _num(p.containerd_cpu_ms.median, 1),
                    _num(p.machine_busy_pct.median, 0),
                    str(p.failures),
                ]
            )
        out += _table(
            [
                "c",
                "client",
                "lifecycles/s",
                "latency p50/p90/p99 ms",
                "RPCs/lifecycle",
                "client CPU ms/lifecycle",
                "containerd CPU ms",
                "machine busy %",
                "failed",
            ],
            rows,
        )
        out.append("")
        out.append(
            f"\\* ctr: {lifecycle.CTR_REFERENCE_RPCS} RPCs is the reference figure, not "
            "measured (ctr's calls are invisible to our counters). † ctr: CPU of the ctr "
            "child processes."
        )
        out.append("")
        rows = []
        for c in cfg.concurrency:
            o, s, r = (_point(life, m_, c) for m_ in ("ours", "stateless", "ctr"))
            if not (o and s and r):
                continue
            rows.append(
                [
                    str(c),
                    _spread(_ratio_spread(o.throughput_per_rep, r.throughput_per_rep), 2),
                    _spread(_ratio_spread(o.throughput_per_rep, s.throughput_per_rep), 2),
                    _num(r.latency_ms.p50 / o.latency_ms.p50 if o.latency_ms.p50 else math.nan, 2),
                    _num(s.latency_ms.p50 / o.latency_ms.p50 if o.latency_ms.p50 else math.nan, 2),
                    _num(
                        (s.rpcs_per_lifecycle or math.nan) / (o.rpcs_per_lifecycle or math.nan), 1
                    ),
                    _num(s.client_cpu_ms.median / o.client_cpu_ms.median, 2),
                    _pct(o.exit_event_latency_ms, 1),
                ]
            )
        out.append(
            "Ratios (same run): throughput ours ÷ other, p50 latency other ÷ ours, and the "
            "exit event's delay from containerd's publish to our Backend callback:"
        )
        out.append("")
        out += _table(
            [
                "c",
                "throughput vs ctr",
                "throughput vs stateless",
                "latency ctr/ours",
                "latency stateless/ours",
                "RPCs stateless/ours",
                "CPU stateless/ours",
                "exit event → callback ms p50/p90/p99",
            ],
            rows,
        )
        out.append("")

    ctl = run.control
    if ctl is not None:
        out.append("## Exec and control operations")
        out.append("")
        out.append(
            f"exec of `/bin/true` (add, start, wait, delete) spread over {ctl.config.targets}"
            " running containers per client; polling across "
            f"{ctl.config.poll_containers} running containers at concurrency "
            f"{ctl.config.poll_concurrency}."
        )
        out.append("")
        rows = [
            [
                p.op,
                str(p.concurrency),
                p.mode,
                _spread(p.throughput),
                _pct(p.latency_ms, 1),
                _num(p.rpcs_per_op, 1) if p.rpcs_per_op is not None else "not measured",
                _spread(p.client_cpu_ms, 2),
                str(p.failures),
            ]
            for p in [*ctl.exec, *ctl.polling]
        ]
        out += _table(
            [
                "op",
                "c",
                "client",
                "ops/s",
                "latency p50/p90/p99 ms",
                "RPCs/op",
                "client CPU ms/op",
                "failed",
            ],
            rows,
        )
        out.append("")
        out.append(
            "`status` answers from the actor's state (0 RPCs); `status-refresh` re-reads "
            "it (Tasks.Get). The stateless client re-reads container and task first."
        )
        out.append("")

    if run.fanout_fake is not None or run.event_latency is not None:
        out.append("## Event fan-out")
        out.append("")
        if run.fanout_fake is not None:
            points = run.fanout_fake
            rows = [
                [
                    str(p.subscribers),
                    f"{p.events:,}",
                    _spread(p.routed_per_s, 0),
                    _spread(p.subscriber_events_per_s, 0),
                    _spread(p.deliveries_per_s, 0),
                    _spread(p.cpu_us_per_event, 1),
                    str(p.lagged_subscribers),
                ]
                for p in points
            ]
            out.append(
                "In-memory fake, 1,000 actors, TaskOOM envelopes round-robin over them; "
                "routed = decoded by the router, applied by the actor and handed to the "
                "Backend callback."
            )
            out.append("")
            out += _table(
                [
                    "subscribers",
                    "events",
                    "routed events/s",
                    "events/s (every subscriber has all)",
                    "deliveries/s",
                    "CPU µs/event",
                    "lagged",
                ],
                rows,
            )
            out.append("")
        lat = run.event_latency
        out.append(
            "Real containerd, publish (Events.Publish of a TaskOOM, containerd's envelope "
            "timestamp) to Backend callback, one event at a time: "
            + (
                f"p50 {_num(lat.p50, 2)} ms, p90 {_num(lat.p90, 2)} ms, p99 "
                f"{_num(lat.p99, 2)} ms (n={lat.n})."
                if lat
                else "not measured."
            )
        )
        out.append("")

    if run.scale_fake is not None:
        out.append("## Scale")
        out.append("")
        f = run.scale_fake
        if f is not None:
            out.append(
                f"- {f.actors:,} actors on the fake, each with a running task (one FIFO): "
                f"created (containers + tasks, 3 RPCs each) at "
                f"{f.actors / f.create_seconds:,.0f} actors/s; RSS {_mib(f.rss_before_bytes)} → "
                f"{_mib(f.rss_after_bytes)} ({f.bytes_per_actor / 1024:.1f} KiB per actor); "
                f"Python heap **{f.heap_bytes_per_actor / 1024:.1f} KiB per actor** (tracemalloc "
                f"over the last {f.heap_sample:,} actors created)."
            )
            out.append(
                f"- command round trip, idle: status (0 RPCs) {_pct(f.idle_status_ms, 3)} ms, "
                f"pids (1 RPC) {_pct(f.idle_pids_ms, 3)} ms (p50/p90/p99)."
            )
            out.append(
                f"- under load ({f.load_description}; achieved {f.load_ops_per_s:,.0f} ops/s and "
                f"{f.load_events_per_s:,.0f} events/s): status {_pct(f.status_under_load_ms, 2)}"
                f" ms, pids {_pct(f.pids_under_load_ms, 2)} ms."
            )
        out.append("")

    out += _images_section(run.images)
    out += _density_markdown(run)
    out += _groups_markdown(run)
    out += _peers_markdown(run)

    if run.not_measured:
        out.append("## Not measured")
        out.append("")
        out += [f"- {item}" for item in run.not_measured]
        out.append("")
    out.append("## Clean-up")
    out.append("")
    out.append(
        "Nothing was left behind."
        if not run.leftovers
        else "Removed at the end (left by an interrupted or failed step): "
        + ", ".join(run.leftovers[:20])
    )
    out.append("")
    out.append("## README snippet")
    out.append("")
    out += readme_snippet(run)
    out.append("")
    return "\n".join(out)


def _images_section(result: images.Result | None) -> list[str]:
    if result is None:
        return []
    out = ["## Image pull and lifecycles from an image", ""]
    out.append(
        f"{result.layers}-layer image of {result.image_bytes / 1e6:.0f} MB (random data, "
        "gzip), pushed to a loopback docker-registry; each pull into a fresh namespace, the "
        "image removed with a synchronous GC after each (so every pull downloads); ours and "
        "ctr alternate who goes first. A loaded, shared machine: compare within the run."
    )
    out.append("")
    rows = []
    for who, pulls in (("ours", result.ours), ("ctr images pull --plain-http", result.ctr)):
        walls = sorted(p.wall_s for p in pulls)
        cpus = sorted(p.cpu_s for p in pulls)
        rpcs = {p.rpcs for p in pulls} if who == "ours" else set()
        rows.append(
            [
                who,
                " / ".join(f"{w:.2f}" for w in walls),
                " / ".join(f"{c:.2f}" for c in cpus),
                ", ".join(str(r) for r in sorted(rpcs)) if rpcs else "not visible (30 + 8/layer)",
            ]
        )
    out += _table(["puller", "wall s (each run)", "client CPU s", "RPCs per pull"], rows)
    if result.ours and result.ctr:
        ratio = statistics.median(p.wall_s for p in result.ours) / statistics.median(
            p.wall_s for p in result.ctr
        )
        out.append("")
        out.append(f"Median wall time ours / ctr: **{ratio:.2f}x** (goal: at most 1.0x).")
    out.append("")
    out.append(
        "RPCs of one pull by method: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result.rpcs_by_method.items()))
    )
    out.append("")
    life = [
        [
            "ours (`new_container(image=...)`)",
            f"{result.rpcs_per_lifecycle:.1f}",
            _pct(result.lifecycle_ours_ms, 1),
        ],
        [
            "ctr run --rm IMAGE",
            f"{result.ctr_rpcs_per_lifecycle} (reference count)",
            _pct(result.lifecycle_ctr_ms, 1),
        ],
    ]
    out += _table(["lifecycle of `true` from the image", "RPCs", "latency ms p50/p90/p99"], life)
    out.append("")
    if result.throughput_ours and result.throughput_ctr:
        ratios = [o / c for o, c in zip(result.throughput_ours, result.throughput_ctr, strict=True)]
        each = " / ".join
        out += _table(
            [f"from the image at concurrency {images.CONCURRENCY}", "lifecycles/s (each run)",
             "RPCs/lifecycle"],
            [
                ["ours", each(f"{t:.1f}" for t in result.throughput_ours),
                 f"{result.rpcs_per_concurrent_lifecycle:.1f}"],
                ["ctr run --rm IMAGE", each(f"{t:.1f}" for t in result.throughput_ctr),
                 f"{result.ctr_rpcs_per_lifecycle} (reference count)"],
            ],
        )  # fmt: skip
        out.append("")
        out.append(
            "Throughput ours / ctr per run (the two alternate who goes first): "
            + ", ".join(f"{r:.2f}x" for r in ratios)
        )
        out.append("")
    return out


# -- plots ----------------------------------------------------------------------------------


def plots(run: Collected, out: Path) -> list[Path]:
    life = run.lifecycle
    if life is None:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        run.not_measured.append("plots: not drawn (matplotlib is not installed)")
        return []
    labels = {"ours": "containerd-actors", "stateless": "stateless client", "ctr": "ctr run --rm"}
    concurrency = life.config.concurrency
    written = []

    def series(mode: str, get: Callable[[lifecycle.Point], float]) -> list[float]:
        values = []
        for c in concurrency:
            p = _point(life, mode, c)
            values.append(get(p) if p is not None else math.nan)
        return values

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in lifecycle.MODES:
        med = series(mode, lambda p: p.throughput.median)
        low = series(mode, lambda p: p.throughput.median - p.throughput.min)
        high = series(mode, lambda p: p.throughput.max - p.throughput.median)
        ax.errorbar(concurrency, med, yerr=[low, high], marker="o", capsize=3, label=labels[mode])
    ax.set_xscale("log", base=2)
    ax.set_xticks(concurrency, [str(c) for c in concurrency])
    ax.set_xlabel("concurrent lifecycles")
    ax.set_ylabel("lifecycles per second (median, min-max)")
    ax.set_title("Lifecycle throughput (busybox true)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "lifecycle-throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in lifecycle.MODES:
        p50 = series(mode, lambda p: p.latency_ms.p50)
        p99 = series(mode, lambda p: p.latency_ms.p99)
        (line,) = ax.plot(concurrency, p50, marker="o", label=f"{labels[mode]} p50")
        ax.plot(
            concurrency,
            p99,
            marker="x",
            linestyle="--",
            color=line.get_color(),
            label=f"{labels[mode]} p99",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(concurrency, [str(c) for c in concurrency])
    ax.set_xlabel("concurrent lifecycles")
    ax.set_ylabel("lifecycle latency, ms")
    ax.set_title("Lifecycle latency (busybox true)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "lifecycle-latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


# -- writing --------------------------------------------------------------------------------


def write(run: Collected, out: Path) -> list[Path]:
    run.goals = judge(run)
    written = plots(run, out)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = "-smoke" if run.smoke else "-quick" if run.quick else ""
    json_path = out / f"{stamp}{suffix}.json"
    json_path.write_bytes(msgspec.json.format(msgspec.json.encode(run), indent=2))
    md_path = out / "latest.md"
    md_path.write_text(markdown(run))
    return [json_path, md_path, *written]


# -- density, shim groups, peers -------------------------------------------------------------


def _density_markdown(run: Collected) -> list[str]:
    results = run.density
    if not results:
        return []
    out = [f"## {results[0].containers:,} idle containers under one supervisor", ""]
    out.append(
        f"busybox `sleep` containers started at concurrency {density.START_CONCURRENCY} by one "
        "supervisor (the last tenth under tracemalloc, not timed), then a second supervisor "
        "restores them all, sits idle, and removes them at the same concurrency. PSS is the "
        "proportional set size (/proc/PID/smaps_rollup): shared pages split among their users."
    )
    out.append("")
    rows = []
    for r in results:
        rows.append(
            [
                r.policy,
                f"{r.containers:,}",
                f"{r.start_seconds:.1f} s ({r.start_per_s:.1f}/s)",
                _pct(r.start_latency_ms),
                _kib(r.rss_per_container_bytes),
                f"{_kib(r.heap_bytes_per_container)} ({r.heap_blocks_per_container:.0f} blocks)",
                f"{r.shims:,}",
                _kib(r.shim_pss_per_container_bytes),
                _kib(r.pss_per_container_bytes),
                f"{r.restore_seconds:.2f} s, "
                + "+".join(
                    str(r.restore_rpcs.get(k, 0)) for k in ("Containers.List", "Tasks.List")
                ),
                f"{r.idle_cpu_pct:.3f} % / {r.idle_wakeups}",
                f"{r.remove_seconds:.1f} s",
                str(r.failures + r.remove_failures),
            ]
        )
    out += _table(
        [
            "shims",
            "containers",
            "start (c=32)",
            "start latency p50/p90/p99 ms",
            "our RSS / container",
            "Python heap / container",
            "shim processes",
            "shim PSS / container",
            "our + shims PSS / container",
            "restore (Containers.List+Tasks.List)",
            f"idle CPU / wake-ups ({results[0].idle_seconds:.0f} s)",
            "remove all",
            "failed",
        ],
        rows,
    )
    out.append("")
    for r in results:
        out.append(
            f"- {r.policy}: our PSS {_mib(r.our_pss_bytes)}, shims' PSS {_mib(r.shim_pss_bytes)}; "
            f"restore sent "
            + ", ".join(f"{k} {v}" for k, v in sorted(r.restore_rpcs.items()))
            + f"; idle CPU Trio thread {r.idle_cpu_trio_pct:.3f} %, other threads "
            f"{r.idle_cpu_threads_pct:.3f} %; containerd {r.containerd_idle_cpu_pct:.2f} % "
            f"(RSS {_mib(r.containerd_rss_bytes)})"
            + (f"; failures: {'; '.join(r.failure_samples)}" if r.failure_samples else "")
        )
    out.append("")
    return out


def _groups_markdown(run: Collected) -> list[str]:
    comparison = run.shim_groups
    if comparison is None:
        return []
    out = ["## Shim groups vs one shim per container", ""]
    out.append(
        f"busybox `true` lifecycles, the two policies alternating in every repetition; groups: "
        f"`ShimGroups(shims={comparison.shims}, max_per_shim={comparison.max_per_shim})`. "
        "Start latency is new_container + start (Containers.Create, Tasks.Create, Tasks.Start), "
        "where a new shim is started or an existing one reused."
    )
    out.append("")
    rows = []
    for p in comparison.points:
        c = caps(
            p.machine_cpu_ms.median, p.client_cpu_ms.median, p.throughput.median,
            run.background_cores,
        )  # fmt: skip
        rows.append(
            [
                str(p.concurrency),
                p.policy,
                _spread(p.throughput),
                _pct(p.latency_ms),
                _pct(p.start_latency_ms),
                _spread(p.machine_cpu_ms),
                _spread(p.client_cpu_ms, 2),
                _spread(p.containerd_cpu_ms, 1),
                _num(c.daemon_cap, 1),
                _num(p.throughput.median / c.daemon_cap, 2) if _ok(c.daemon_cap) else "n/a",
                f"{p.shims_started} / {p.create_retries}",
                _num(p.rpcs_per_lifecycle, 2),
                str(p.failures),
            ]
        )
    out += _table(
        [
            "c",
            "shims",
            "lifecycles/s",
            "latency p50/p90/p99 ms",
            "start latency p50/p90/p99 ms",
            "machine CPU ms/lifecycle",
            "client CPU ms",
            "containerd CPU ms",
            "daemon-side cap /s",
            "fraction of cap",
            "shims started / creates repeated",
            "RPCs/lifecycle",
            "failed",
        ],
        rows,
    )
    out.append("")
    return out


def _peers_markdown(run: Collected) -> list[str]:
    result = run.peers
    if result is None:
        return []
    out = ["## Peers: `docker run --rm` and `podman run --rm`", ""]
    out.append(
        "busybox `true` through each tool's own front end, interleaved with ours in every "
        "repetition; docker is Debian's dockerd started for the run on its own data root and "
        "socket, driving the run's private containerd; podman runs runc through conmon with "
        "its own storage. " + "; ".join(f"{k}: {v}" for k, v in result.versions.items() if v)
    )
    out.append("")
    for peer, reason in result.skipped.items():
        out.append(f"- {peer}: **skipped** ({reason})")
    if result.skipped:
        out.append("")
    rows = []
    ours = {p.concurrency: p for p in result.points if p.peer == "ours"}
    for p in result.points:
        base = ours.get(p.concurrency)
        ratio = (
            _ratio_spread(base.throughput_per_rep, p.throughput_per_rep)
            if base is not None and p.peer != "ours"
            else None
        )
        rows.append(
            [
                str(p.concurrency),
                p.peer,
                _spread(p.throughput),
                _pct(p.latency_ms),
                _spread(p.machine_cpu_ms, 0),
                f"{_spread(ratio, 2)}x" if ratio is not None else "",
                str(p.failures),
            ]
        )
    out += _table(
        [
            "c",
            "tool",
            "lifecycles/s",
            "latency p50/p90/p99 ms",
            "machine CPU ms/lifecycle",
            "ours ÷ tool (throughput)",
            "failed",
        ],
        rows,
    )
    out.append("")
    for p in result.points:
        if p.failure_samples:
            out.append(f"- {p.peer} failures: {'; '.join(p.failure_samples)}")
    out.append("")
    return out
