"""``python -m benchmarks [--quick] [--out DIR] [--only PHASE,...]`` (phases: see --help).

Runs as root: it starts its own containerd in a temp dir (never a system one), builds a
busybox rootfs, works in its own namespaces and removes everything it created when it ends,
also on Ctrl-C or SIGTERM. Progress goes to stderr; results go to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import trio

from actors import open_client

from . import _env, control, density, fanout, images, lifecycle, peers, report, scale
from ._lab import Lab, host_problem
from ._progress import Progress

PHASES = ("lifecycle", "exec", "fanout", "scale", "images", "density", "peers")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the under-5-minutes mode")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where results are written")
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases to run (default: all of {','.join(PHASES)})",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes that only check the harness runs end to end (figures mean nothing)",
    )
    parser.add_argument(
        "--containers",
        type=int,
        metavar="N",
        help="idle containers per shim policy in the density phase (default: 1,000; quick: 100)",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the py-spy / pyinstrument profiles that explain missed goals",
    )
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")
    return args


async def _main(
    args: argparse.Namespace, lab: Lab, collected: report.Collected, progress: Progress
) -> None:
    quick = args.quick
    profile_dir = None if args.no_profile else args.out
    smoke = args.smoke
    cfg_life = lifecycle.config(quick, smoke=smoke)
    cfg_control = control.config(quick, smoke=smoke)
    cfg_fan = fanout.config(quick, smoke=smoke)
    cfg_scale = scale.config(quick, smoke=smoke)
    cfg_images = images.config(quick, smoke=smoke)
    cfg_density = density.config(quick, smoke=smoke)
    if args.containers is not None:
        cfg_density = msgspec.structs.replace(cfg_density, containers=args.containers)
    cfg_peers = peers.config(quick, smoke=smoke)
    real = any(
        p in args.phases for p in ("lifecycle", "exec", "fanout", "images", "density", "peers")
    )
    problem = host_problem() if real else None

    plan: list[tuple[str, bool, float, Callable[[], Awaitable[None]]]] = []

    async def do_lifecycle() -> None:
        collected.lifecycle = await lifecycle.run(lab, cfg_life, progress, profile_dir=profile_dir)

    async def do_exec() -> None:
        collected.control = await control.run(lab, cfg_control, progress)

    async def do_fanout_fake() -> None:
        found = await fanout.run_fake(cfg_fan, progress, profile_dir=profile_dir)
        collected.fanout_fake, collected.fanout_profile = found

    async def do_fanout_latency() -> None:
        collected.event_latency = await fanout.run_latency(lab, cfg_fan, progress)

    async def do_scale_fake() -> None:
        collected.scale_fake = await scale.run_fake(cfg_scale, progress)

    async def do_images() -> None:
        missing = images.missing_tools()
        if missing:
            collected.not_measured.append(f"images: not measured (needs {', '.join(missing)})")
            return
        collected.images = await images.run(lab, cfg_images, progress)

    async def do_density() -> None:
        collected.density = await density.run_idle(lab, cfg_density, progress)

    async def do_groups() -> None:
        collected.shim_groups = await density.run_lifecycles(lab, cfg_density, progress)

    async def do_peers() -> None:
        collected.peers = await peers.run(lab, cfg_peers, progress)

    # Real-daemon phases first, the fake's after: the fake's 10,000 actors leave freed
    # memory behind that would blur the RSS growth measured with real containers.
    if "lifecycle" in args.phases:
        plan.append(("lifecycle", True, lifecycle.estimate(cfg_life), do_lifecycle))
    if "exec" in args.phases:
        plan.append(("exec and control ops", True, control.estimate(cfg_control), do_exec))
    if "fanout" in args.phases:
        estimate = fanout.estimate_latency(cfg_fan)
        plan.append(("publish-to-callback latency", True, estimate, do_fanout_latency))
    if "images" in args.phases:
        plan.append(("image pull and lifecycles", True, images.estimate(cfg_images), do_images))
    if "density" in args.phases:
        estimate = density.estimate_idle(cfg_density)
        plan.append((f"{cfg_density.containers} idle containers", True, estimate, do_density))
        estimate = density.estimate_lifecycles(cfg_density)
        plan.append(("shim groups side by side", True, estimate, do_groups))
    if "peers" in args.phases:
        plan.append(("docker and podman", True, peers.estimate(cfg_peers), do_peers))
    if "fanout" in args.phases:
        plan.append(("fan-out on the fake", False, fanout.estimate_fake(cfg_fan), do_fanout_fake))
    if "scale" in args.phases:
        estimate = scale.estimate_fake(cfg_scale)
        plan.append(("10,000 actors on the fake", False, estimate, do_scale_fake))
    collected.config = {
        "lifecycle": cfg_life,
        "control": cfg_control,
        "fanout": cfg_fan,
        "scale": cfg_scale,
        "images": cfg_images,
        "density": cfg_density,
        "peers": cfg_peers,
    }

    needs_daemon = any(needs for _, needs, _, _ in plan)
    if needs_daemon and problem is None:
        progress.say(f"starting a private containerd under {lab.base}")
        await trio.to_thread.run_sync(lab.start)
        async with open_client(
            lab.address, lab.namespace("probe"), state_dir=lab.state_dir("probe")
        ) as client:
            collected.containerd_version = " ".join(await client.version())
        progress.say("sampling the machine's background load (3 s)")
        collected.background_cores.append(await _env.background_cores())
    for _name, needs, weight, _ in plan:
        if not needs or problem is None:
            progress.plan(weight)

    for name, needs, _, action in plan:
        if needs and problem is not None:
            collected.not_measured.append(f"{name}: not measured ({problem})")
            continue
        progress.say(f"phase: {name}")
        collected.phase_load[name] = [os.getloadavg()[0]]
        try:
            await action()
        except Exception as exc:
            traceback.print_exc()
            collected.not_measured.append(
                f"{name}: not measured (failed: {type(exc).__name__}: {exc})"
            )
        collected.phase_load[name].append(os.getloadavg()[0])
    if needs_daemon and problem is None:
        collected.background_cores.append(await _env.background_cores())


async def _guarded(
    args: argparse.Namespace, lab: Lab, collected: report.Collected, progress: Progress
) -> None:
    async with trio.open_nursery() as nursery:

        async def on_sigterm() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    progress.say("SIGTERM: stopping and cleaning up")
                    collected.interrupted = True
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(on_sigterm)
        await _main(args, lab, collected, progress)
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    collected = report.Collected(
        command=shlex.join(
            ["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])]
        ),
        quick=args.quick,
        smoke=args.smoke,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=_env.machine(),
        versions=_env.versions(),
    )
    lab = Lab()
    began = time.monotonic()
    try:
        trio.run(_guarded, args, lab, collected, progress)
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        # Ctrl-C may surface wrapped in the exception group of a nursery it crossed.
        if isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is None:
            raise
        collected.interrupted = True
        progress.say("interrupted: cleaning up")
    finally:
        try:
            collected.leftovers = trio.run(lab.purge)
        except BaseException as exc:  # cleanup must go on to the daemon and the temp dir
            collected.leftovers.append(f"purge failed: {exc!r}")
        lab.close()
        progress.say("private containerd stopped, temp dir removed")
    collected.duration_s = time.monotonic() - began
    collected.machine["loadavg_at_end"] = os.getloadavg()
    paths = report.write(collected, out)
    for path in paths:
        progress.say(f"wrote {path}")
    return 130 if collected.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
