"""Output throughput: ``python -m benchmarks.output [--size-mib N] [--rounds R]``.

One container writes ``--size-mib`` MiB of zeros to stdout, and we measure, side by side in the
same run:

* ``run`` through the control plane: the CLI (a subprocess) against an in-process gateway,
  output drained into the log store on disk, replayed to the CLI over the websocket, written
  by the CLI to a file;
* the library alone: ``task.io.stdout`` read in-process (what the log drain costs without
  the disk and the websocket);
* ``ctr run --rm`` writing to a file (containerd's own client, the floor).

docker's ``local``/``json-file`` drivers are measured when a docker daemon answers here.
CPU is ours only (this process plus its children: the CLI, or ctr); containerd, the shim and
runc cost the same in every row and are not counted. Also reported: what the log store costs
per container lifecycle (create, append a line, read, remove) without containerd.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from actors import build_spec, open_client
from actors.control._gateway_logs import LogManager
from actors.control._policy import SpecPolicy
from actors.control.gateway import Gateway, GatewayConfig
from actors.core._logstore import LogReadOptions, LogStore

from ._lab import Lab, host_problem

MiB = 1 << 20


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


class Row:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds: list[float] = []
        self.cpu: list[float] = []

    def add(self, seconds: float, cpu: float) -> None:
        self.seconds.append(seconds)
        self.cpu.append(cpu)

    def line(self, size: int) -> str:
        if not size:
            cpu_ms = _median(self.cpu) * 1000
            return f"| {self.name} | - | {min(self.seconds):.2f} | {cpu_ms:.0f} ms in all |"
        best = min(self.seconds)
        cpu = sorted(self.cpu)[len(self.cpu) // 2]
        return (
            f"| {self.name} | {size / MiB / best:.0f} | {best:.2f} | "
            f"{cpu * 1000 / (size / MiB):.1f} |"
        )


async def _timed(row: Row, fn: object) -> None:
    start, cpu = time.perf_counter(), _cpu()
    await fn()  # type: ignore[operator]
    row.add(time.perf_counter() - start, _cpu() - cpu)


async def bench(size: int, rounds: int) -> str:
    lab = Lab()
    lab.start()
    rootfs = lab.rootfs
    assert rootfs is not None
    namespace = lab.namespace("output")
    sink = lab.base / "sink"
    token = secrets.token_urlsafe(32)
    fixed, cli, library, ctr = (
        "control plane `run` of `/bin/true` (fixed cost: CLI start + lifecycle)",
        "control plane `run` (log store)",
        "library `task.io`",
        "`ctr run`",
    )
    rows = {name: Row(name) for name in (fixed, cli, library, ctr)}
    command = ["/bin/head", "-c", str(size), "/dev/zero"]
    try:
        policy = SpecPolicy(default_rootfs=str(lab.rootfs), allowed_rootfs_roots=(str(lab.rootfs),))
        async with (
            open_client(lab.address, namespace, state_dir=lab.state_dir("output")) as client,
            trio.open_nursery() as nursery,
        ):
            logs = LogManager(lab.base / "logs")
            gateway = Gateway(client, GatewayConfig(token=token, policy=policy, port=0), logs=logs)
            await nursery.start(gateway.serve)
            env = {
                **os.environ,
                "CONTAINERD_ACTORS_TOKEN": token,
                "CONTAINERD_ACTORS_URL": f"ws://127.0.0.1:{gateway.port}",
            }

            async def via_cli(argv: list[str] = command, expected: int = size) -> None:
                cli = [sys.executable, "-m", "supervisor", "run", "--rm", "busybox", "--", *argv]
                with sink.open("wb") as handle:
                    await trio.run_process(cli, stdout=handle, env=env)
                assert sink.stat().st_size == expected

            async def true_via_cli() -> None:
                await via_cli(["/bin/true"], 0)

            async def via_library() -> None:
                container = await client.new_container(
                    f"lib-{secrets.token_hex(3)}", build_spec(rootfs, command)
                )
                task = await container.start()
                assert task.io is not None
                assert task.io.stdout is not None
                got = 0
                while chunk := await task.io.stdout.receive_some(1 << 16):
                    got += len(chunk)
                assert got == size
                await task.wait()
                await task.delete()
                await container.delete()

            async def via_ctr() -> None:
                with sink.open("wb") as handle:
                    await trio.run_process(
                        [
                            "ctr",
                            "-a",
                            lab.address,
                            "-n",
                            namespace,
                            "run",
                            "--rm",
                            "--fifo-dir",
                            lab.fifo_dir(),
                            "--rootfs",
                            str(lab.rootfs),
                            f"ctr-{secrets.token_hex(3)}",
                            *command,
                        ],
                        stdout=handle,
                        stdin=b"",
                    )
                assert sink.stat().st_size == size

            for _ in range(rounds):  # interleaved, so drift hits every row alike
                await _timed(rows[fixed], true_via_cli)
                await _timed(rows[cli], via_cli)
                await _timed(rows[library], via_library)
                await _timed(rows[ctr], via_ctr)
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            await lab.purge()
        lab.close()
    lines = [
        f"Output of one container, {size // MiB} MiB of zeros to stdout, best of {rounds} "
        "(CPU: median, ours only: this process and its children)",
        "",
        "| path | MB/s | seconds | our CPU ms per MiB |",
        "|---|---|---|---|",
        rows[fixed].line(0),
        *(row.line(size) for name, row in rows.items() if name != fixed),
    ]
    try:
        docker = await trio.run_process(
            ["docker", "info"], capture_stdout=True, capture_stderr=True, check=False
        )
        has_docker = docker.returncode == 0
    except OSError:
        has_docker = False
    if not has_docker:
        lines.append("| docker `local` / `json-file` | not measured: no docker daemon here | | |")
    return "\n".join(lines) + "\n"


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

        start, cpu = time.perf_counter(), _cpu()
        trio.run(all_of_them)
        wall, used = time.perf_counter() - start, _cpu() - cpu
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return (
        f"Log store per container lifecycle (create, append a line, read it back, remove; no "
        f"containerd): {wall / iterations * 1e6:.0f} us wall, {used / iterations * 1e6:.0f} us "
        f"CPU, over {iterations} lifecycles."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.output", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "output.md")
    )
    args = parser.parse_args(argv)
    problem = host_problem()
    if problem is not None:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2
    text = trio.run(bench, args.size_mib * MiB, args.rounds)
    text += "\n" + _store_cost() + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
