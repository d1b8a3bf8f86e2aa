"""Output throughput: ``python -m benchmarks.output [--size-mib N] [--lines L] [--rounds R]``.

One container writes its output to stdout and a client writes it to a file; side by side,
interleaved in every round (the order rotates), with the same busybox files everywhere:

* ``run`` through the control plane: the CLI (a subprocess) against an in-process gateway;
  the output is drained into the log store on disk, replayed from it over the websocket and
  written by the CLI to the file;
* the library alone: ``task.io.stdout`` read in-process and written to the file (the drain
  without the disk and the websocket);
* ``ctr run --rm`` (containerd's own client; the shim's FIFO copied straight to the file);
* ``docker run --rm --log-driver local`` and ``--log-driver json-file``: Debian's dockerd
  started for the run (:mod:`benchmarks._docker`) on the same containerd; the CLI attached,
  so dockerd copies the FIFO both into the log driver (on disk) and to the attached CLI;
* reading back after the container exited: our ``logs`` (the log store replayed over the
  websocket, no drain running) and ``docker logs`` of each driver (the run itself untimed).

Workloads: ``--size-mib`` MiB of zeros (``head -c``: no newlines), ``seq 1 L`` (short lines)
and ``true`` (no output: what each path costs before any byte, so the per-MiB figures can be
read net of it). Every row's file is checked against the expected size and SHA-256.

CPU, per row, is what that client side costs (containerd, the shim and runc are the same
for every row and not counted):

* ours (control plane): this process (gateway, log drain, log store, websocket) + the CLI;
* library: this process;
* ctr: the ctr process;
* docker: the docker CLI + dockerd's CPU over the run (dockerd drains the FIFO, writes the
  log driver's file and feeds the attach stream: the work our gateway does).

Also reported: what the log store costs per container lifecycle, within real lifecycles of
``/bin/true`` through the library (the gateway's store path against draining ``task.io``),
and in a store-only loop without containerd.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import trio

from actors import Client, build_spec, open_client
from actors.control._gateway_logs import ContainerLogSettings, LogManager, log_chunks
from actors.control._policy import SpecPolicy
from actors.control.gateway import Gateway, GatewayConfig
from actors.core._logstore import LogReadOptions, LogStore

from ._docker import IMAGE, DockerDaemon, docker_daemon
from ._lab import Lab, host_problem

MiB = 1 << 20
PATHS = frozenset({"control", "library", "ctr", "docker"})
_WRITE_CHUNK = 1 << 16


def _self_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def _children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


class Workload(msgspec.Struct, frozen=True):
    key: str
    title: str
    argv: list[str]
    size: int
    sha256: str


def _workloads(size: int, lines: int) -> list[Workload]:
    zeros = hashlib.sha256()
    block = bytes(MiB)
    for start in range(0, size, MiB):
        zeros.update(block[: min(MiB, size - start)])
    text = "".join(f"{n}\n" for n in range(1, lines + 1)).encode()
    return [
        Workload("true", "`/bin/true` (no output: the fixed cost)", ["/bin/true"], 0,
                 hashlib.sha256().hexdigest()),
        Workload("zeros", f"{size / MiB:g} MiB of zeros (`head -c {size} /dev/zero`)",
                 ["/bin/head", "-c", str(size), "/dev/zero"], size, zeros.hexdigest()),
        Workload("lines", f"`seq 1 {lines}` ({len(text) / MiB:.1f} MiB in {lines:,} lines)",
                 ["/bin/seq", "1", str(lines)], len(text), hashlib.sha256(text).hexdigest()),
    ]  # fmt: skip


def _verify(path: Path, workload: Workload) -> str | None:
    """None if ``path`` holds exactly the workload's output, else what is wrong."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
            size += len(chunk)
    if size != workload.size:
        return f"{size:,} of {workload.size:,} bytes"
    if digest.hexdigest() != workload.sha256:
        return f"all {size:,} bytes, but not the right ones (sha256)"
    return None


class Row:
    def __init__(self, name: str, counts: str) -> None:
        self.name = name
        self.counts = counts
        self.seconds: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.wrong: dict[str, list[str]] = {}  # rounds whose file was not the output

    def add(self, workload: str, seconds: float, cpu: float) -> None:
        self.seconds.setdefault(workload, []).append(seconds)
        self.cpu.setdefault(workload, []).append(cpu)

    def line(self, workload: Workload) -> str:
        wrong = self.wrong.get(workload.key, [])
        note = ""
        if wrong:
            rounds = len(wrong) + len(self.seconds.get(workload.key, []))
            note = (
                f" **output incomplete in {len(wrong)} of {rounds} rounds** "
                f"({'; '.join(wrong[:2])}; those rounds not counted)"
            )
        if workload.key not in self.seconds:
            return f"| {self.name}{note} | not measured | | | |"
        best = min(self.seconds[workload.key])
        cpu = _median(self.cpu[workload.key])
        if not workload.size:
            return f"| {self.name}{note} | - | {best:.2f} | {cpu * 1000:.0f} ms in all | |"
        mib = workload.size / MiB
        fixed = _median(self.cpu["true"]) if "true" in self.cpu else 0.0
        return (
            f"| {self.name}{note} | {workload.size / 1e6 / best:.0f} | {best:.2f} | "
            f"{cpu * 1000 / mib:.1f} | {max(cpu - fixed, 0.0) * 1000 / mib:.1f} |"
        )


# A path runs one workload into the sink file and returns (wall seconds, CPU seconds).
Runner = Callable[[Workload, Path], Awaitable[tuple[float, float]]]


async def _timed_children(
    command: list[str], sink: Path, extra: Callable[[], float]
) -> tuple[float, float]:
    """Run ``command`` with stdout to ``sink``: wall, and the CPU of the child plus ``extra``."""
    with sink.open("wb") as handle:
        start, kids, more = time.perf_counter(), _children_cpu(), extra()
        result = await trio.run_process(command, stdout=handle, stdin=b"", check=False)
        wall = time.perf_counter() - start
        cpu = _children_cpu() - kids + extra() - more
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {result.returncode}")
    return wall, cpu


async def _quiet(command: list[str], env: dict[str, str] | None = None) -> None:
    """Run an untimed step (a setup or a cleanup) to its end; RuntimeError if it fails."""
    result = await trio.run_process(
        command, stdout=subprocess.DEVNULL, stdin=b"", capture_stderr=True, env=env, check=False
    )
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {result.returncode}: {err}")


def _nothing() -> float:
    return 0.0


async def bench(size: int, lines: int, rounds: int, only: frozenset[str] = PATHS) -> str:
    lab = Lab()
    lab.start()
    rootfs = lab.rootfs
    assert rootfs is not None
    namespace = lab.namespace("output")
    sink = lab.base / "sink"
    token = secrets.token_urlsafe(32)
    workloads = _workloads(size, lines)
    rows: dict[str, Row] = {}
    runners: dict[str, Runner] = {}
    skipped: list[str] = []
    lifecycle = ""
    try:
        policy = SpecPolicy(default_rootfs=str(rootfs), allowed_rootfs_roots=(str(rootfs),))
        async with (
            open_client(lab.address, namespace, state_dir=lab.state_dir("output")) as client,
            trio.open_nursery() as nursery,
            contextlib.AsyncExitStack() as stack,
        ):
            logs = LogManager(lab.base / "logs")
            gateway = Gateway(client, GatewayConfig(token=token, policy=policy, port=0), logs=logs)
            await nursery.start(gateway.serve)
            # The CLI keeps its bytecode cache, as an installed package has one: with
            # PYTHONDONTWRITEBYTECODE (set on some machines) every start would compile the
            # sources again. The warm-up run below writes the cache.
            env = {
                **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
                "CONTAINERD_ACTORS_TOKEN": token,
                "CONTAINERD_ACTORS_URL": f"ws://127.0.0.1:{gateway.port}",
            }

            async def ours(workload: Workload, path: Path) -> tuple[float, float]:
                cli = [sys.executable, "-m", "supervisor", "run", "--rm", "busybox", "--"]
                with path.open("wb") as handle:
                    start, cpu = time.perf_counter(), _self_cpu() + _children_cpu()
                    await trio.run_process([*cli, *workload.argv], stdout=handle, env=env)
                    return time.perf_counter() - start, _self_cpu() + _children_cpu() - cpu

            async def ours_logs(workload: Workload, path: Path) -> tuple[float, float]:
                cli = [sys.executable, "-m", "supervisor"]
                name = f"lg-{secrets.token_hex(3)}"
                await _quiet([*cli, "run", "--name", name, "busybox", "--", *workload.argv], env)
                try:
                    with path.open("wb") as handle:
                        start, cpu = time.perf_counter(), _self_cpu() + _children_cpu()
                        await trio.run_process([*cli, "logs", name], stdout=handle, env=env)
                        return time.perf_counter() - start, _self_cpu() + _children_cpu() - cpu
                finally:
                    await _quiet([*cli, "rm", name], env)

            async def library(workload: Workload, path: Path) -> tuple[float, float]:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    start, cpu = time.perf_counter(), _self_cpu()
                    container = await client.new_container(
                        f"lib-{secrets.token_hex(3)}", build_spec(rootfs, workload.argv)
                    )
                    task = await container.start()
                    assert task.io is not None
                    assert task.io.stdout is not None
                    while chunk := await task.io.stdout.receive_some(_WRITE_CHUNK):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                    await task.wait()
                    await task.delete()
                    await container.delete()
                    return time.perf_counter() - start, _self_cpu() - cpu
                finally:
                    os.close(fd)

            async def ctr(workload: Workload, path: Path) -> tuple[float, float]:
                command = [
                    "ctr", "-a", lab.address, "-n", namespace, "run", "--rm",
                    "--fifo-dir", lab.fifo_dir(), "--rootfs", str(rootfs),
                    f"ctr-{secrets.token_hex(3)}", *workload.argv,
                ]  # fmt: skip
                return await _timed_children(command, path, _nothing)

            def docker(daemon: DockerDaemon, driver: str) -> Runner:
                async def run(workload: Workload, path: Path) -> tuple[float, float]:
                    command = [
                        *daemon.client, "run", "--rm", "--network", "none",
                        "--log-driver", driver, IMAGE, *workload.argv,
                    ]  # fmt: skip
                    return await _timed_children(command, path, daemon.cpu_seconds)

                return run

            def docker_logs(daemon: DockerDaemon, driver: str) -> Runner:
                async def run(workload: Workload, path: Path) -> tuple[float, float]:
                    name = f"dl-{secrets.token_hex(3)}"
                    await _quiet([
                        *daemon.client, "run", "--name", name, "--network", "none",
                        "--log-driver", driver, IMAGE, *workload.argv,
                    ])  # fmt: skip
                    try:
                        command = [*daemon.client, "logs", name]
                        return await _timed_children(command, path, daemon.cpu_seconds)
                    finally:
                        await _quiet([*daemon.client, "rm", name])

                return run

            def add(name: str, counts: str, runner: Runner) -> None:
                if name.split()[0].strip("`") in only:
                    rows[name] = Row(name, counts)
                    runners[name] = runner

            add("control plane `run` (log store)", "this process + the CLI", ours)
            add("library `task.io`", "this process", library)
            add("`ctr run`", "ctr", ctr)
            try:
                if "docker" not in only:
                    raise RuntimeError("not asked for (--only)")
                daemon = await stack.enter_async_context(docker_daemon(lab))
            except (RuntimeError, OSError, trio.TooSlowError) as exc:
                skipped.append(f"docker `local` / `json-file`: not measured: {exc}")
            else:
                for driver in ("local", "json-file"):
                    add(
                        f"`docker run --log-driver {driver}`",
                        "docker CLI + dockerd",
                        docker(daemon, driver),
                    )
            # Read back after the container exited: the log files alone, no drain running.
            add(
                "control plane `logs` after exit (from the log store)",
                "this process + the CLI",
                ours_logs,
            )
            if "docker" in only and not skipped:
                for driver in ("local", "json-file"):
                    add(
                        f"`docker logs` after exit (`{driver}`)",
                        "docker CLI + dockerd",
                        docker_logs(daemon, driver),
                    )
            names = list(rows)
            for name in names:  # warm-up, not counted: first imports, first image use
                await runners[name](workloads[0], sink)
            for index in range(rounds):
                order = names[index % len(names) :] + names[: index % len(names)]
                for workload in workloads:
                    for name in order:  # interleaved, so drift hits every row alike
                        wall, cpu = await runners[name](workload, sink)
                        wrong = _verify(sink, workload)
                        if wrong is None:
                            rows[name].add(workload.key, wall, cpu)
                        else:  # reported in the row, never counted as a result
                            rows[name].wrong.setdefault(workload.key, []).append(wrong)
                        await trio.sleep(0.2)  # let the run's teardown settle
            lifecycle = await _lifecycle_cost(client, rootfs, lab.base / "lifecycle-logs")
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            await lab.purge()
        lab.close()
    lines_out = [
        f"Output of one container to a file, best wall time of {rounds} rounds, CPU the median "
        '(ms of CPU per MiB of output; "net": beyond the same path\'s `true` run). Every '
        "row's file was checked for size and SHA-256; a round whose file was not exactly the "
        "output is reported in its row and not counted.",
        "",
        "CPU counted per row: "
        + "; ".join(f"{row.name}: {row.counts}" for row in rows.values())
        + ". containerd, the shim and runc are not counted (the same in every row).",
    ]
    for workload in workloads:
        lines_out += [
            "",
            f"**{workload.title}**",
            "",
            "| path | MB/s | seconds | CPU ms per MiB | net CPU ms per MiB |",
            "|---|---|---|---|---|",
            *(row.line(workload) for row in rows.values()),
        ]
    lines_out += ["", *skipped, "", lifecycle]
    return "\n".join(lines_out) + "\n"


async def _lifecycle_cost(client: Client, rootfs: Path, root: Path, iterations: int = 40) -> str:
    """Lifecycles of ``/bin/true`` through the library, alternating: output drained from
    ``task.io`` (no store), and drained into a LogManager store the way the gateway does
    (settings file, store, drain task), read back to its end, and removed."""
    logs = LogManager(root)
    spec = build_spec(rootfs, ["/bin/true"])
    plain: tuple[list[float], list[float]] = ([], [])
    stored: tuple[list[float], list[float]] = ([], [])

    async def without_store() -> None:
        container = await client.new_container(f"lp-{secrets.token_hex(4)}", spec)
        task = await container.start()
        assert task.io is not None
        for pipe in (task.io.stdout, task.io.stderr):
            if pipe is not None:
                await pipe.read_all()
        await task.wait()
        await task.delete()
        await container.delete()

    async def with_store() -> None:
        cid = f"ls-{secrets.token_hex(4)}"
        logs.configure(cid, ContainerLogSettings())
        container = await client.new_container(cid, spec)
        task = await container.start(attach_stdio=logs.stdio_callback(cid))
        chunks = log_chunks(logs.store(cid), LogReadOptions(follow=True))
        async with contextlib.aclosing(chunks):
            async for _chunk in chunks:
                pass
        await task.wait()
        await task.delete()
        await container.delete()
        logs.remove(cid)

    async with trio.open_nursery() as nursery:
        await nursery.start(logs.run)
        for index in range(iterations * 2):
            fn, into = (without_store, plain) if index % 2 else (with_store, stored)
            start, cpu = time.perf_counter(), _self_cpu()
            await fn()
            into[0].append(time.perf_counter() - start)
            into[1].append(_self_cpu() - cpu)
        nursery.cancel_scope.cancel()
    wall = (_median(stored[0]) - _median(plain[0])) * 1e3
    cpu = (_median(stored[1]) - _median(plain[1])) * 1e3
    return (
        f"Log store per lifecycle, within real lifecycles of `/bin/true` through the library "
        f"({iterations} of each, alternating; medians): output drained into a store as the "
        f"gateway does (settings file, store, drain, read back, remove) "
        f"{_median(stored[0]) * 1e3:.1f} ms wall, {_median(stored[1]) * 1e3:.1f} ms CPU; "
        f"drained from `task.io` {_median(plain[0]) * 1e3:.1f} ms wall, "
        f"{_median(plain[1]) * 1e3:.1f} ms CPU; difference {wall:+.1f} ms wall, "
        f"{cpu:+.1f} ms CPU."
    )


def _store_cost(iterations: int = 2000) -> str:
    base = Path(tempfile.mkdtemp(prefix="cab-logs-"))
    try:

        async def one(index: int) -> None:
            store = LogStore(base / f"c{index}")
            store.start_writing()
            store.append(1, b"hello\n")
            store.finish()
            async with contextlib.aclosing(store.read(LogReadOptions())) as records:
                async for _record in records:
                    pass
            store.remove()

        async def all_of_them() -> None:
            for index in range(iterations):
                await one(index)

        start, cpu = time.perf_counter(), _self_cpu()
        trio.run(all_of_them)
        wall, used = time.perf_counter() - start, _self_cpu() - cpu
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return (
        f"Log store alone per container lifecycle (create, append a line, read it back, remove; "
        f"no containerd): {wall / iterations * 1e6:.0f} us wall, {used / iterations * 1e6:.0f} "
        f"us CPU, over {iterations} lifecycles."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.output", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--lines", type=int, default=3_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "output.md")
    )
    parser.add_argument(
        "--only",
        default=",".join(sorted(PATHS)),
        help=f"comma-separated paths to measure (default: all of {','.join(sorted(PATHS))})",
    )
    args = parser.parse_args(argv)
    only = frozenset(p.strip() for p in args.only.split(",") if p.strip())
    if not only or not only <= PATHS:
        parser.error(f"--only takes some of {', '.join(sorted(PATHS))}")
    problem = host_problem()
    if problem is not None:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    text = trio.run(bench, args.size_mib * MiB, args.lines, args.rounds, only)
    text += "\n" + _store_cost() + "\n"
    text += (
        f"\n1-minute load average (2 shared CPUs): {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.\n"
    )
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
