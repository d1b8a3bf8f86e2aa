"""Docker's container verbs besides run/exec/attach: ps, inspect, start, stop, restart,
pause, unpause, top, wait, cp and stats.

Verbs that take several containers go on past one that fails, print an error line for it
and exit 1 at the end, as docker does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import posixpath
import secrets
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any

import trio

from ..errors import ContainerdActorsError, InvalidArgument, NotFound
from ._clibase import (
    ago,
    docker_state,
    format_template,
    open_gateway,
    parse_rfc3339,
    print_json,
    say,
    status_text,
)
from .gateway_client import GatewayClient

# -- ps --------------------------------------------------------------------------------------

_PS_FILTERS = ("id", "name", "label", "status", "exited")
_STATES = ("created", "running", "paused", "exited")


def _ps_filter(entries: list[str]) -> Callable[[dict[str, Any]], bool]:
    wanted: dict[str, list[str]] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or key not in _PS_FILTERS:
            raise InvalidArgument(
                f"invalid filter {entry!r}: use {', '.join(k + '=' for k in _PS_FILTERS)}"
            )
        if key == "status" and value not in _STATES:
            raise InvalidArgument(
                f"invalid filter {entry!r}: status is one of {', '.join(_STATES)}"
            )
        wanted.setdefault(key, []).append(value)

    def label_ok(info: dict[str, Any], spec: str) -> bool:
        key, sep, value = spec.partition("=")
        labels = info.get("labels") or {}
        return key in labels and (not sep or labels[key] == value)

    def matches(info: dict[str, Any]) -> bool:
        cid = info["id"]
        exit_code = str(((info.get("task") or {}).get("exit") or {}).get("code", ""))
        state = docker_state(info)
        checks: dict[str, Callable[[str], bool]] = {
            "id": lambda v: bool(cid.startswith(v)),
            "name": lambda v: v in cid,
            "status": lambda v: state == v,
            "exited": lambda v: state == "exited" and exit_code == v,
        }
        for key, values in wanted.items():
            if key == "label":
                if not all(label_ok(info, v) for v in values):
                    return False
            elif not any(checks[key](v) for v in values):
                return False
        return True

    return matches


def _command(info: dict[str, Any], truncate: bool) -> str:
    text = " ".join(info.get("args") or [])
    text = f'"{text}"'
    if truncate and len(text) > 22:
        text = text[:20] + '…"'
    return text


async def cmd_ps(args: argparse.Namespace) -> int:
    matches = _ps_filter(args.filter)
    async with open_gateway(args) as gw:
        containers = await gw.call("container.list")
    now = dt.datetime.now(dt.UTC)
    shown = [
        c
        for c in sorted(containers, key=lambda c: c.get("created") or "", reverse=True)
        if (args.all or docker_state(c) in ("running", "paused")) and matches(c)
    ]
    if args.quiet:
        for c in shown:
            print(c["id"])
        return 0
    if args.format == "json":
        for c in shown:
            print_json(c)
        return 0
    rows = [
        (
            c["id"],
            c.get("image") or "",
            _command(c, not args.no_trunc),
            ago(c.get("created"), now),
            status_text(c, now),
            c["id"],
        )
        for c in shown
    ]
    header = ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES")
    _print_table(header, rows)
    return 0


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("   ".join(cells).rstrip())


# -- inspect ---------------------------------------------------------------------------------


def docker_inspect(info: dict[str, Any]) -> dict[str, Any]:
    """Our container description in the shape of ``docker inspect`` (what applies)."""
    task = info.get("task") or {}
    exit_ = task.get("exit") or {}
    state = docker_state(info)
    args = info.get("args") or []
    restart = info.get("restart") or {}
    policy, _, retries = str(restart.get("policy", "no")).partition(":")
    return {
        "Id": info["id"],
        "Name": "/" + info["id"],
        "Created": info.get("created"),
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": {
            "Status": state,
            "Running": state in ("running", "paused"),
            "Paused": state == "paused",
            "Restarting": bool(restart.get("pending")),
            "Dead": False,
            "Pid": task.get("pid", 0) if state in ("running", "paused") else 0,
            "ExitCode": exit_.get("code", 0),
            "Error": "",
            "StartedAt": info.get("started"),
            "FinishedAt": exit_.get("exited_at"),
        },
        "Image": info.get("image", ""),
        "Config": {
            "Hostname": info.get("hostname", ""),
            "User": info.get("user", ""),
            "Tty": info.get("terminal", False),
            "Env": info.get("env", []),
            "Cmd": args,
            "WorkingDir": info.get("cwd", ""),
            "Labels": info.get("labels", {}),
            "StopSignal": str(info.get("stop_signal", "")),
            "Volumes": {path: {} for path in info.get("volumes", [])} or None,
        },
        "HostConfig": {
            "Memory": info.get("memory_limit", 0),
            "PidsLimit": info.get("pids_limit", 0),
            "AutoRemove": info.get("auto_remove", False),
            "RestartPolicy": {"Name": policy, "MaximumRetryCount": int(retries or 0)},
            "Runtime": info.get("runtime", ""),
        },
        "RestartCount": restart.get("count", 0),
        "Platform": "linux",
    }


async def cmd_inspect(args: argparse.Namespace) -> int:
    found: list[dict[str, Any]] = []
    failures = 0
    async with open_gateway(args) as gw:
        for cid in args.containers:
            try:
                found.append(docker_inspect(await gw.call("container.inspect", {"id": cid})))
            except ContainerdActorsError as exc:
                failures += 1
                say(f"{cid}: {exc}")
    if args.format in (None, "json"):
        if args.format == "json":
            for item in found:
                print_json(item)
        else:
            import json

            print(json.dumps(found, indent=4))
    else:
        for item in found:
            print(format_template(args.format, item))
    return 1 if failures else 0


# -- one call per container ------------------------------------------------------------------


async def _each(
    args: argparse.Namespace,
    action: Callable[[GatewayClient, str], Awaitable[str | None]],
) -> int:
    failures = 0
    async with open_gateway(args) as gw:
        for cid in args.containers:
            try:
                line = await action(gw, cid)
            except ContainerdActorsError as exc:
                failures += 1
                say(f"{cid}: {exc}")
                continue
            if line is not None:
                print(line, flush=True)
    return 1 if failures else 0


async def _start(gw: GatewayClient, cid: str) -> str:
    info = await gw.call("container.inspect", {"id": cid})
    task = info.get("task")
    if task is not None:
        if task.get("status") != "stopped":
            return cid  # docker: starting a running container is a no-op
        await gw.call("task.delete", {"id": cid})
    await gw.call("task.start", {"id": cid})
    return cid


def _stop_params(args: argparse.Namespace, cid: str) -> dict[str, Any]:
    params: dict[str, Any] = {"id": cid}
    if args.time is not None:
        params["timeout"] = args.time
    if getattr(args, "signal", None):
        params["signal"] = args.signal
    return params


async def cmd_start(args: argparse.Namespace) -> int:
    return await _each(args, _start)


async def cmd_stop(args: argparse.Namespace) -> int:
    async def stop(gw: GatewayClient, cid: str) -> str:
        await gw.call("container.stop", _stop_params(args, cid))
        return cid

    return await _each(args, stop)


async def cmd_restart(args: argparse.Namespace) -> int:
    async def restart(gw: GatewayClient, cid: str) -> str:
        await gw.call("container.stop", _stop_params(args, cid))
        return await _start(gw, cid)

    return await _each(args, restart)


async def cmd_pause(args: argparse.Namespace) -> int:
    method = "task.pause" if args.verb == "pause" else "task.resume"

    async def pause(gw: GatewayClient, cid: str) -> str:
        await gw.call(method, {"id": cid})
        return cid

    return await _each(args, pause)


async def cmd_wait(args: argparse.Namespace) -> int:
    async def wait(gw: GatewayClient, cid: str) -> str:
        status = await gw.call("task.wait", {"id": cid})
        return str(status["code"])

    return await _each(args, wait)


async def cmd_kill(args: argparse.Namespace) -> int:
    async def kill(gw: GatewayClient, cid: str) -> str:
        await gw.call("task.kill", {"id": cid, "signal": args.signal})
        return cid

    return await _each(args, kill)


async def cmd_top(args: argparse.Namespace) -> int:
    async with open_gateway(args) as gw:
        rows = await gw.call("task.top", {"id": args.container})
    if args.format == "json":
        for row in rows:
            print_json(row)
        return 0
    table = []
    for row in rows:
        started = parse_rfc3339(row.get("started"))
        stime = started.astimezone().strftime("%H:%M") if started else ""
        table.append((str(row["uid"]), str(row["pid"]), str(row["ppid"]), stime, row["cmd"]))
    _print_table(("UID", "PID", "PPID", "STIME", "CMD"), table)
    return 0


# -- stats -----------------------------------------------------------------------------------


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.4g}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{value}"


async def cmd_stats(args: argparse.Namespace) -> int:
    """docker stats: CPU % from two samples, memory usage against the limit, pids."""
    async with open_gateway(args) as gw:
        ids = list(args.containers)
        if not ids:
            listed = await gw.call("container.list")
            ids = [c["id"] for c in listed if docker_state(c) == "running"]
        previous: dict[str, tuple[float, int]] = {}
        interval = 0.5 if args.no_stream else 1.0
        first = True
        while True:
            rows: list[tuple[str, ...]] = []
            samples: list[dict[str, Any]] = []
            for cid in ids:
                try:
                    stats = await gw.call("task.stats", {"id": cid})
                except ContainerdActorsError as exc:
                    if first:
                        say(f"{cid}: {exc}")
                        return 1
                    continue
                now = trio.current_time()
                cpu_ns = int(stats["cpu"]["usage_total_ns"])
                before = previous.get(cid)
                previous[cid] = (now, cpu_ns)
                percent = (
                    (cpu_ns - before[1]) / ((now - before[0]) * 1e9) * 100
                    if before and now > before[0]
                    else None
                )
                memory, pids = stats["memory"], stats["pids"]
                limit = memory.get("limit_bytes") or 0
                if limit >= 1 << 62:
                    limit = 0
                usage = memory["usage_bytes"]
                samples.append({"id": cid, "cpu_percent": percent, **stats})
                rows.append(
                    (
                        cid,
                        f"{percent:.2f}%" if percent is not None else "--",
                        f"{_size(usage)} / {_size(limit) if limit else 'unlimited'}",
                        f"{usage / limit * 100:.2f}%" if limit else "--",
                        str(pids["current"]),
                    )
                )
            if not first or not args.no_stream:
                if args.format == "json":
                    for sample in samples:
                        print_json(sample)
                else:
                    if not args.no_stream and sys.stdout.isatty():
                        print("\x1b[2J\x1b[H", end="")
                    header = ("CONTAINER", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS")
                    _print_table(header, rows)
                sys.stdout.flush()
                if args.no_stream:
                    return 0
            first = False
            await trio.sleep(interval)


# -- cp: tar through an exec of the container's own tar -------------------------------------


async def _exec_collect(
    gw: GatewayClient, cid: str, argv: list[str], stdin: IO[bytes] | None, stdout: IO[bytes]
) -> tuple[int, bytes]:
    """Run ``argv`` in the container; its stdout goes to ``stdout``, its stderr is returned."""
    exec_id = f"cp-{secrets.token_hex(4)}"
    await gw.call(
        "process.exec",
        {"id": cid, "exec_id": exec_id, "args": argv, "stdin": stdin is not None},
    )
    errors = bytearray()
    try:
        async with gw.attach(cid, exec_id) as session, trio.open_nursery() as nursery:
            if stdin is not None:

                async def feed() -> None:
                    while chunk := await trio.to_thread.run_sync(stdin.read, 1 << 16):
                        await session.send_stdin(chunk)
                    await session.close_stdin()

                nursery.start_soon(feed)
            async for channel, data in session.output():
                if channel == 1:
                    stdout.write(data)
                else:
                    errors += data[: 4096 - len(errors)]
            nursery.cancel_scope.cancel()
        status = await gw.call("process.wait", {"id": cid, "exec_id": exec_id})
    finally:
        with trio.CancelScope(shield=True), _suppress_gateway_errors():
            await gw.call("process.delete", {"id": cid, "exec_id": exec_id})
    return int(status["code"]), bytes(errors)


class _suppress_gateway_errors:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        return isinstance(value, ContainerdActorsError)


def _split_target(text: str) -> tuple[str | None, str]:
    # CONTAINER:PATH; a local path with ':' in it must be written ./a:b, as with docker.
    if text.startswith(("/", ".")) or ":" not in text:
        return None, text
    cid, _, path = text.partition(":")
    return cid, path


async def cmd_cp(args: argparse.Namespace) -> int:
    source_cid, source = _split_target(args.source)
    dest_cid, dest = _split_target(args.destination)
    if (source_cid is None) == (dest_cid is None):
        raise InvalidArgument(
            "copying between containers or between local paths is not supported: "
            "one side must be CONTAINER:PATH"
        )
    async with open_gateway(args) as gw:
        if source_cid is not None:
            return await _copy_out(gw, source_cid, source, dest)
        assert dest_cid is not None
        return await _copy_in(gw, dest_cid, source, dest)


async def _copy_out(gw: GatewayClient, cid: str, source: str, dest: str) -> int:
    if not source.startswith("/"):
        raise InvalidArgument(f"the container path {source!r} must be absolute")
    parent, base = posixpath.split(posixpath.normpath(source))
    base = base or "."
    with tempfile.TemporaryFile() as archive:
        code, errors = await _exec_collect(
            gw, cid, ["tar", "cf", "-", "-C", parent or "/", base], None, archive
        )
        if code != 0:
            say(
                f"{cid}:{source}: {errors.decode(errors='replace').strip() or f'tar exited {code}'}"
            )
            return 1
        archive.seek(0)
        if dest == "-":
            shutil.copyfileobj(archive, sys.stdout.buffer)
            return 0
        await trio.to_thread.run_sync(_extract, archive, base, Path(dest))
    return 0


def _extract(archive: IO[bytes], base: str, dest: Path) -> None:
    try:
        _extract_unchecked(archive, base, dest)
    except (tarfile.TarError, OSError) as exc:
        # e.g. a member the data filter refused: say so rather than fail with a traceback.
        raise InvalidArgument(f"cannot copy to {dest}: {exc}") from None


def _extract_unchecked(archive: IO[bytes], base: str, dest: Path) -> None:
    # The archive comes from a container: the "data" filter refuses absolute paths, links
    # that leave the destination, device files and setuid bits.
    with tarfile.open(fileobj=archive, mode="r:") as tar:
        if dest.is_dir():
            tar.extractall(dest, filter="data")
            return
        if not dest.parent.is_dir():
            raise InvalidArgument(f"{dest.parent} is not a directory")
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".cp-") as scratch:
            tar.extractall(scratch, filter="data")
            os.replace(Path(scratch) / base, dest)


async def _copy_in(gw: GatewayClient, cid: str, source: str, dest: str) -> int:
    if not dest.startswith("/"):
        raise InvalidArgument(f"the container path {dest!r} must be absolute")
    src = Path(source)
    if not await trio.to_thread.run_sync(src.exists):
        raise NotFound(f"no such file or directory: {source}")
    with tempfile.TemporaryFile() as probe:
        is_dir, _ = await _exec_collect(gw, cid, ["test", "-d", dest], None, probe)
    if is_dir == 0:
        directory, name = dest, src.name
    else:
        directory, name = posixpath.split(posixpath.normpath(dest))
    with tempfile.TemporaryFile() as archive:

        def pack() -> None:
            with tarfile.open(fileobj=archive, mode="w:") as tar:
                tar.add(src, arcname=name)
            archive.seek(0)

        await trio.to_thread.run_sync(pack)
        with tempfile.TemporaryFile() as sink:
            code, errors = await _exec_collect(
                gw, cid, ["tar", "xf", "-", "-C", directory or "/"], archive, sink
            )
    if code != 0:
        say(f"{cid}:{dest}: {errors.decode(errors='replace').strip() or f'tar exited {code}'}")
        return 1
    return 0
