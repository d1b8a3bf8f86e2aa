"""The `containerd-actors` command line: `serve`, and docker-like verbs that talk to it.

Exit codes follow docker: the container's own code for run/exec, 125 when the control
plane or containerd refused, 126 when the command cannot be invoked, 127 when it was not
found. ``--format json`` prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from ..containerd._embedded import default_state_root
from ..core._groups import collapse
from ..core._logstore import LogConfig
from ..core.spec import HARDENED_MEMORY_LIMIT, HARDENED_PIDS_LIMIT
from ..errors import ContainerdActorsError, FailedPrecondition, InvalidArgument, NotFound
from ._images_cli import add_image_verbs, pull_with_progress
from ._logopts import parse_size, parse_time
from ._policy import SpecPolicy
from .gateway_client import (
    DEFAULT_URL,
    GatewayClient,
    GatewayError,
    StdioSession,
    connect_gateway,
)

# A verb: parsed arguments in, exit code out (run under trio.run).
Verb = Callable[[argparse.Namespace], Awaitable[int]]

EXIT_DAEMON_ERROR = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127
# docker's code for a failed client stream: the server went away, or output was dropped.
EXIT_STREAM_FAILED = 1
_json = msgspec.json.Encoder()


def _say(message: str) -> None:
    print(f"containerd-actors: {message}", file=sys.stderr, flush=True)


# -- serve (the composition itself is actors/_serve.py, outside this layer) ---------------


def load_or_create_token(path: Path) -> str:
    """Read the token file, or create it (0600) with 256 random bits on first start."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        # By descriptor: the path is not looked up again (nothing may follow a swapped name).
        os.fchmod(handle.fileno(), 0o600)
        handle.write(token + "\n")
    return token


def serve_policy(args: argparse.Namespace) -> SpecPolicy:
    """The spec policy ``serve``'s flags ask for.

    Containers run on images (``busybox`` by default, the built-in one imported into
    containerd's store when absent), each on its own snapshot. Directories under
    ``--rootfs-root`` stay usable as rootfs, but read-only: one directory is shared by every
    container on it, so a writable one would let a container change the next one's root.
    """
    return SpecPolicy(
        default_rootfs=None,
        readonly_rootfs_dirs=True,
        allowed_rootfs_roots=tuple(args.rootfs_root),
        allowed_bind_roots=tuple(args.bind_root),
        # 0 turns a default off; the ceilings still apply.
        default_memory_limit=args.default_memory or None,
        default_pids_limit=args.default_pids or None,
        max_memory_limit=args.max_memory,
        max_pids_limit=args.max_pids,
        seccomp=not args.no_seccomp,
    )


# -- client verbs --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _gateway(args: argparse.Namespace) -> Any:
    state_root = Path(args.state_dir) if args.state_dir else default_state_root()
    token = os.environ.get("CONTAINERD_ACTORS_TOKEN")
    if not token:
        token_file = Path(args.token_file) if args.token_file else state_root / "token"
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise GatewayError(
                -32000,
                f"cannot read the token file {token_file} ({exc.strerror}); "
                "is `containerd-actors serve` running? (or set CONTAINERD_ACTORS_TOKEN)",
            ) from None
    try:
        async with connect_gateway(args.url, token) as gateway:
            yield gateway
    except OSError as exc:
        raise GatewayError(
            -32000,
            f"cannot reach the control plane at {args.url} ({exc}); "
            "start it with `containerd-actors serve`",
        ) from None


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _start_exit_code(exc: Exception) -> int:
    text = str(exc).lower()
    if "permission denied" in text or "is a directory" in text:
        return EXIT_CANNOT_INVOKE
    if "no such file" in text or "not found" in text or "executable file" in text:
        return EXIT_NOT_FOUND
    return EXIT_DAEMON_ERROR


async def _pump_stdin(session: Any) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while data := await stdin.receive_some(1 << 16):
            await session.send_stdin(data)
    await session.close_stdin()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _copy_output(session: StdioSession) -> None:
    async for channel, data in session.output():
        _write_all(sys.stdout.fileno() if channel == 1 else sys.stderr.fileno(), data)


def _dropped_verdict(session: StdioSession, allow_dropped: bool) -> bool:
    """Warn about dropped output; True when that must fail the command."""
    if not session.dropped:
        return False
    _say(
        f"warning: {session.dropped} bytes of output were dropped (lossy log mode; "
        f"{len(session.drop_reports)} gap(s))"
    )
    return not allow_dropped


async def _stream(
    gw: GatewayClient,
    container_id: str,
    exec_id: str | None,
    *,
    interactive: bool,
    tty: bool,
    replay: bool = False,
    allow_dropped: bool = False,
) -> int | None:
    """Copy a process's stdio to ours until it exits; returns its exit code."""
    async with (
        gw.attach(container_id, exec_id, replay=replay) as session,
        trio.open_nursery() as nursery,
    ):
        if tty and sys.stdout.isatty():
            size = os.get_terminal_size()
            await session.resize(size.columns, size.lines)
        if interactive:
            nursery.start_soon(_pump_stdin, session)
        await _copy_output(session)
        nursery.cancel_scope.cancel()
    if session.failure is not None:
        _say(session.failure)
    if _dropped_verdict(session, allow_dropped) and not session.exit_code:
        return EXIT_STREAM_FAILED
    return session.exit_code


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Any:
    if not enabled or not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(sys.stdin.fileno())
    tty.setraw(sys.stdin.fileno())
    try:
        yield
    finally:
        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


def _is_directory_rootfs(image: str) -> bool:
    # Image references never start with "/" or "."; directories (under --rootfs-root) do.
    return image.startswith(("/", "./", "../")) or image == "."


def _create_params(args: argparse.Namespace, name: str) -> dict[str, Any]:
    params: dict[str, Any] = {"id": name, "terminal": args.tty}
    if _is_directory_rootfs(args.image):
        params["rootfs"] = os.path.abspath(args.image)
        params["args"] = args.command or ["sh"]
    else:
        params["image"] = args.image
        if args.command:
            params["args"] = args.command
        if args.entrypoint is not None:
            params["entrypoint"] = [args.entrypoint]
    if args.env:
        params["env"] = args.env
    if args.workdir:
        params["cwd"] = args.workdir
    if args.memory:
        params["memory_limit"] = args.memory
    if args.label:
        params["labels"] = dict(label.partition("=")[::2] for label in args.label)
    log = {
        key: value
        for key, value in (
            ("max_size", args.log_max_size),
            ("max_files", args.log_max_files),
            ("buffer_size", args.log_buffer_size),
        )
        if value is not None
    }
    if args.log_mode != "blocking":
        log["mode"] = args.log_mode
    if log:
        params["log"] = log
    return params


async def cmd_run(args: argparse.Namespace) -> int:
    name = args.name or f"run-{secrets.token_hex(4)}"
    async with _gateway(args) as gw:
        params = _create_params(args, name)
        try:
            await gw.call("container.create", params)
        except NotFound:
            if "image" not in params:
                raise
            # Like docker: an image that is not there is pulled first.
            _say(f"Unable to find image '{args.image}' locally")
            await pull_with_progress(gw, args.image)
            await gw.call("container.create", params)
        try:
            try:
                await gw.call("task.start", {"id": name, "stdin": args.interactive or args.tty})
            except ContainerdActorsError as exc:
                _say(f"cannot start {name}: {exc}")
                return _start_exit_code(exc)
            if args.detach:
                print(name)
                return 0
            with _raw_terminal(args.tty):
                # From the start of the log: every byte, in order, however fast it came.
                code = await _stream(
                    gw,
                    name,
                    None,
                    interactive=args.interactive,
                    tty=args.tty,
                    replay=True,
                    allow_dropped=args.allow_dropped,
                )
            status = await gw.call("task.wait", {"id": name})
            await gw.call("task.delete", {"id": name})
            return int(status["code"]) if code is None else code
        finally:
            if args.rm and not args.detach:
                with trio.CancelScope(shield=True), contextlib.suppress(ContainerdActorsError):
                    await gw.call("container.delete", {"id": name})


async def cmd_exec(args: argparse.Namespace) -> int:
    exec_id = f"exec-{secrets.token_hex(4)}"
    async with _gateway(args) as gw:
        params = {
            "id": args.container,
            "exec_id": exec_id,
            "args": args.command,
            "terminal": args.tty,
            "stdin": args.interactive or args.tty,
        }
        try:
            await gw.call("process.exec", params)
        except ContainerdActorsError as exc:
            _say(f"cannot exec in {args.container}: {exc}")
            return _start_exit_code(exc)
        with _raw_terminal(args.tty):
            code = await _stream(
                gw, args.container, exec_id, interactive=args.interactive, tty=args.tty
            )
        status = await gw.call("process.wait", {"id": args.container, "exec_id": exec_id})
        await gw.call("process.delete", {"id": args.container, "exec_id": exec_id})
        return int(status["code"]) if code is None else code


async def cmd_ps(args: argparse.Namespace) -> int:
    async with _gateway(args) as gw:
        containers = await gw.call("container.list")
    if args.format == "json":
        for container in containers:
            print(_json.encode(container).decode())
        return 0
    print(f"{'CONTAINER ID':<32} {'STATUS':<10} {'PID':>8}  EXIT")
    for c in sorted(containers, key=lambda c: c["id"]):
        task = c.get("task") or {}
        exit_ = task.get("exit") or {}
        print(
            f"{c['id']:<32} {task.get('status', 'no task'):<10} {task.get('pid', ''):>8}  "
            f"{exit_.get('code', '')}"
        )
    return 0


async def cmd_kill(args: argparse.Namespace) -> int:
    async with _gateway(args) as gw:
        for container_id in args.containers:
            await gw.call("task.kill", {"id": container_id, "signal": args.signal})
            print(container_id)
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    failures = 0
    async with _gateway(args) as gw:
        for index, container_id in enumerate(args.containers, 1):
            if len(args.containers) > 3:
                _say(f"removing {index}/{len(args.containers)}: {container_id}")
            try:
                info = await gw.call("container.inspect", {"id": container_id})
                task = info.get("task")
                if task is not None:
                    if task.get("status") != "stopped" and not args.force:
                        raise FailedPrecondition(
                            f"container {container_id} is running; stop it or use --force"
                        )
                    if task.get("status") != "stopped":
                        with contextlib.suppress(NotFound):
                            await gw.call(
                                "task.kill", {"id": container_id, "signal": "KILL", "all": True}
                            )
                        await gw.call("task.wait", {"id": container_id})
                    await gw.call("task.delete", {"id": container_id})
                await gw.call("container.delete", {"id": container_id})
                print(container_id)
            except ContainerdActorsError as exc:
                failures += 1
                _say(f"{container_id}: {exc}")
    return 1 if failures else 0


async def cmd_attach(args: argparse.Namespace) -> int:
    async with _gateway(args) as gw:
        code = await _stream(
            gw,
            args.container,
            None,
            interactive=args.interactive,
            tty=False,
            allow_dropped=args.allow_dropped,
        )
    return 0 if code is None else code


async def cmd_logs(args: argparse.Namespace) -> int:
    wall = time.time_ns()  # --since 10m means ten minutes of the wall clock
    options: dict[str, Any] = {"follow": args.follow, "timestamps": args.timestamps}
    if args.tail != "all":
        options["tail"] = int(args.tail)
    if args.since:
        options["since"] = parse_time(args.since, now_ns=wall)
    if args.until:
        options["until"] = parse_time(args.until, now_ns=wall)
    async with _gateway(args) as gw, gw.logs(args.container, **options) as session:
        await _copy_output(session)
    failed = _dropped_verdict(session, args.allow_dropped)
    if not session.ended:
        _say("the control plane went away before the end of the log")
        return EXIT_STREAM_FAILED
    if session.failure is not None:
        _say(session.failure)
        return EXIT_STREAM_FAILED
    return EXIT_STREAM_FAILED if failed else 0


async def cmd_events(args: argparse.Namespace) -> int:
    filters: dict[str, list[str]] = {}
    for entry in args.filter:
        key, sep, value = entry.partition("=")
        if not sep or key not in ("container", "event", "label"):
            raise InvalidArgument(f"invalid filter {entry!r}: use container=, event= or label=")
        filters.setdefault(key, []).append(value)
    async with _gateway(args) as gw, gw.subscribe(filters or None) as events:
        async for event in events:
            if args.format == "json":
                print(_json.encode(event).decode(), flush=True)
            else:
                attributes = ", ".join(f"{k}={v}" for k, v in event["Actor"]["Attributes"].items())
                print(
                    f"{event['time']} container {event['Action']} {event['Actor']['ID']} "
                    f"({attributes})",
                    flush=True,
                )
        if gw.connection_lost:
            _say("the control plane went away; no more events")
            return EXIT_STREAM_FAILED
    return 0


async def cmd_stats(args: argparse.Namespace) -> int:
    async with _gateway(args) as gw:
        for container_id in args.containers:
            stats = await gw.call("task.stats", {"id": container_id})
            if args.format == "json":
                print(_json.encode({"id": container_id, **stats}).decode())
                continue
            memory, cpu, pids = stats["memory"], stats["cpu"], stats["pids"]
            print(
                f"{container_id}: cpu {cpu['usage_total_ns'] / 1e9:.2f}s  "
                f"mem {memory['usage_bytes'] / 2**20:.1f} MiB  pids {pids['current']}"
            )
    return 0


async def cmd_version(args: argparse.Namespace) -> int:
    async with _gateway(args) as gw:
        version = await gw.call("version")
    if args.format == "json":
        print(_json.encode(version).decode())
    else:
        print(
            f"containerd {version['version']} ({version['revision']}), "
            f"protocol {version['protocol']}"
        )
    return 0


# -- parsing ---------------------------------------------------------------------------------

EPILOG = """\
examples:
  containerd-actors serve                               # control plane on ws://127.0.0.1:7878
  containerd-actors run --rm busybox -- echo hello      # prints hello, exits 0
  containerd-actors pull alpine:3.20                    # per-layer progress
  containerd-actors images                              # REPOSITORY TAG IMAGE ID CREATED SIZE
  containerd-actors run -d --name web busybox -- httpd -f -p 8080
  containerd-actors exec -it web -- sh
  containerd-actors ps --format json
  containerd-actors events --filter event=die
  containerd-actors rm -f web
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="containerd-actors",
        description="Run containers through containerd, one Trio actor per container. "
        "`serve` runs the control plane; the other verbs are its clients.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("CONTAINERD_ACTORS_URL", DEFAULT_URL),
        help="control plane address, ws://HOST:PORT or unix:///PATH "
        "(env CONTAINERD_ACTORS_URL; default %(default)s)",
    )
    parser.add_argument(
        "--token-file",
        help="bearer token file (default <state-dir>/token; env CONTAINERD_ACTORS_TOKEN overrides)",
    )
    parser.add_argument(
        "--state-dir", help="state directory (default /var/lib/containerd-actors for root)"
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    serve = sub.add_parser(
        "serve",
        help="supervise containers and serve the control plane",
        description="Supervise a containerd namespace and serve the "
        "websocket control plane (JSON-RPC 2.0, subprotocol "
        "containerd-actors.v1). Starts a private containerd when none "
        "answers at --address.",
    )
    serve.add_argument(
        "--address",
        help="containerd socket (default "
        "/run/containerd/containerd.sock; embedded containerd when none answers)",
    )
    serve.add_argument("--namespace", default="containerd-actors", help="containerd namespace")
    serve.add_argument(
        "--listen",
        default="127.0.0.1:7878",
        help="HOST:PORT to listen on (loopback only unless TLS is configured; default %(default)s)",
    )
    serve.add_argument("--unix", help="listen on this unix socket (mode 0600) instead of TCP")
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        help="browser Origin allowed to connect (repeatable; default: none)",
    )
    serve.add_argument(
        "--rootfs-root",
        action="append",
        default=[],
        help="directory whose subdirectories clients may use as rootfs (mounted read-only)",
    )
    serve.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]|CIDR",
        help="registry pulled over plain HTTP (repeatable; loopback registries always are)",
    )
    serve.add_argument(
        "--bind-root",
        action="append",
        default=[],
        help="host directory clients may bind-mount from (default: none)",
    )
    serve.add_argument(
        "--default-memory",
        type=_non_negative,
        default=HARDENED_MEMORY_LIMIT,
        metavar="BYTES",
        help="memory limit for containers that ask for none (0: none; default %(default)s)",
    )
    serve.add_argument(
        "--default-pids",
        type=_non_negative,
        default=HARDENED_PIDS_LIMIT,
        metavar="N",
        help="pids limit for containers that ask for none (0: none; default %(default)s)",
    )
    serve.add_argument(
        "--max-memory",
        type=_positive,
        metavar="BYTES",
        help="refuse memory limits above this (default: no ceiling)",
    )
    serve.add_argument(
        "--max-pids",
        type=_positive,
        metavar="N",
        help="refuse pids limits above this (default: no ceiling)",
    )
    serve.add_argument(
        "--no-seccomp",
        action="store_true",
        help="do not apply the default seccomp profile (not recommended)",
    )
    serve.add_argument(
        "--shim-groups",
        type=_non_negative,
        default=0,
        metavar="K",
        help="pack containers into K runc shims filled in rotation (0, the default: one shim "
        "per container); see --shim-group-size",
    )
    serve.add_argument(
        "--shim-group-size",
        type=_positive,
        default=16,
        metavar="N",
        help="with --shim-groups: at most N containers per shim (default %(default)s)",
    )
    serve.add_argument(
        "--log-max-size",
        type=parse_size,
        default=LogConfig().max_size,
        help="rotate a container's log file at this size (e.g. 20m; default %(default)s bytes)",
    )
    serve.add_argument(
        "--log-max-files",
        type=int,
        default=LogConfig().max_files,
        help="log files kept per container, the one being written included (default %(default)s)",
    )

    def container_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
        p.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")

    run = sub.add_parser(
        "run",
        help="create and start a container, print its output",
        epilog="example: containerd-actors run --rm busybox -- sh -c 'exit 3'; echo $?   # 3",
    )
    container_opts(run)
    run.add_argument("--rm", action="store_true", help="remove the container when it exits")
    run.add_argument("-d", "--detach", action="store_true", help="print the id and return")
    run.add_argument("--name", help="container id (default run-<random>)")
    run.add_argument("-e", "--env", action="append", help="KEY=VALUE (repeatable)")
    run.add_argument("-w", "--workdir", help="working directory inside the container")
    run.add_argument("-l", "--label", action="append", help="KEY=VALUE label (repeatable)")
    run.add_argument("-m", "--memory", type=int, help="memory limit in bytes")
    run.add_argument(
        "--log-max-size", type=parse_size, help="this container's log file size (e.g. 10m)"
    )
    run.add_argument("--log-max-files", type=int, help="this container's log files kept")
    run.add_argument(
        "--log-mode",
        choices=("blocking", "lossy"),
        default="blocking",
        help="blocking (default): the container waits when its log cannot keep up; "
        "lossy: output is dropped instead, and readers are told how much",
    )
    run.add_argument(
        "--log-buffer-size",
        type=parse_size,
        help="output held in memory before blocking or dropping (default 1m)",
    )
    run.add_argument(
        "--allow-dropped",
        action="store_true",
        help="dropped output (lossy mode) is a warning, not a failure",
    )
    run.add_argument(
        "--entrypoint",
        help="replace the image's ENTRYPOINT (and drop its CMD); '' clears it",
    )
    run.add_argument(
        "image",
        metavar="IMAGE",
        help="an image (busybox is built in; others are pulled when missing) or a rootfs "
        "directory (/path, ./path) under an allowed root",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="command (after --)")
    run.set_defaults(handler=cmd_run)

    exec_ = sub.add_parser(
        "exec",
        help="run a command in a running container",
        epilog="example: containerd-actors exec -it web -- sh",
    )
    container_opts(exec_)
    exec_.add_argument("container")
    exec_.add_argument("command", nargs=argparse.REMAINDER, help="command (after --)")
    exec_.set_defaults(handler=cmd_exec)

    logs = sub.add_parser(
        "logs",
        help="print a container's log (kept on disk by serve; running or stopped)",
        epilog="example: containerd-actors logs -f --tail 10 -t web",
    )
    logs.add_argument("-f", "--follow", action="store_true", help="wait for more until it exits")
    logs.add_argument("--tail", default="all", help="only the last N lines (default all)")
    logs.add_argument("--since", help="from this time: RFC 3339, Unix time, or 10m/1h ago")
    logs.add_argument("--until", help="up to this time (same forms as --since)")
    logs.add_argument("-t", "--timestamps", action="store_true", help="prefix each line")
    logs.add_argument("container")
    logs.set_defaults(handler=cmd_logs)
    attach = sub.add_parser("attach", help="attach to a container's stdio (output from now on)")
    attach.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    attach.add_argument("container")
    attach.set_defaults(handler=cmd_attach)
    for p in (logs, attach):
        p.add_argument(
            "--allow-dropped",
            action="store_true",
            help="dropped output (lossy mode) is a warning, not a failure",
        )

    add_image_verbs(sub, _gateway)
    ps = sub.add_parser("ps", help="list containers")
    kill = sub.add_parser("kill", help="signal containers")
    kill.add_argument(
        "-s",
        "--signal",
        default="KILL",
        help="signal name or number "
        "(default KILL; note PID 1 ignores signals it has no handler for)",
    )
    kill.add_argument("containers", nargs="+")
    kill.set_defaults(handler=cmd_kill)
    rm = sub.add_parser("rm", help="remove containers (their tasks must be stopped, or -f)")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running task first")
    rm.add_argument("containers", nargs="+")
    rm.set_defaults(handler=cmd_rm)
    events = sub.add_parser("events", help="stream events (docker's fields + containerd topic)")
    events.add_argument(
        "--filter",
        action="append",
        default=[],
        help="container=ID, event=ACTION (create, start, die, oom, exec_create, "
        "exec_start, exec_die, pause, unpause) or label=KEY[=VALUE]",
    )
    stats = sub.add_parser("stats", help="one snapshot of cgroup statistics")
    stats.add_argument("containers", nargs="+")
    version = sub.add_parser("version", help="containerd's and the protocol's versions")
    for p, handler in (
        (ps, cmd_ps),
        (events, cmd_events),
        (stats, cmd_stats),
        (version, cmd_version),
    ):
        p.add_argument(
            "--format", choices=("table", "json"), default="table", help="json: one object per line"
        )
        p.set_defaults(handler=handler)
    return parser


def run_cli(argv: Sequence[str] | None, serve: Verb) -> int:
    """Parse ``argv`` and run its verb; ``serve`` is the program's composition.

    The control plane does not import the program (the serve composition sits above every
    layer, in actors/_serve.py), so the program hands its ``serve`` in here.
    """
    args = build_parser().parse_args(argv)
    if args.verb == "serve":
        args.handler = serve
    command = getattr(args, "command", None)
    if command and command[0] == "--":
        args.command = command[1:]
    if args.verb == "exec" and not args.command:
        _say("exec needs a command after --")
        return EXIT_DAEMON_ERROR
    if args.verb == "logs" and args.tail != "all" and not args.tail.isdigit():
        _say(f"invalid --tail {args.tail!r}: a number of lines, or all")
        return EXIT_DAEMON_ERROR
    try:
        try:
            code: int = trio.run(args.handler, args)
        except BaseExceptionGroup as group:
            raise collapse(group) from None
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except (ContainerdActorsError, ValueError) as exc:
        _say(str(exc))
        return EXIT_DAEMON_ERROR
    return code
