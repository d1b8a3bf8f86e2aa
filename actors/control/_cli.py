"""The `containerd-actors` command line: `serve`, and docker-like verbs that talk to it.

Exit codes follow docker: the container's own code for run/exec, 125 when the control
plane or containerd refused, 126 when the command cannot be invoked, 127 when it was not
found. ``--format json`` prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import trio

from ..core._groups import collapse
from ..core._logstore import LogConfig
from ..core._restart import ContainerRestartPolicy
from ..core.spec import (
    CONTAINERD_DEFAULT_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    HARDENED_MEMORY_LIMIT,
    HARDENED_PIDS_LIMIT,
)
from ..errors import ContainerdActorsError, FailedPrecondition, InvalidArgument, NotFound
from ._cliargs import (
    DEFAULT_DETACH_KEYS,
    parse_bytes,
    parse_detach_keys,
    parse_time,
    parse_user,
    resolve_env,
    user_param,
    validate_name,
    validate_workdir,
)
from ._clibase import (
    EXIT_CANNOT_INVOKE,
    EXIT_DAEMON_ERROR,
    EXIT_NOT_FOUND,
    EXIT_STREAM_FAILED,
    open_gateway,
    print_json,
    say,
)
from ._cliterm import StreamResult, _write_all, forwarded_signals, raw_terminal, stream
from ._cliverbs import (
    cmd_cp,
    cmd_inspect,
    cmd_kill,
    cmd_pause,
    cmd_ps,
    cmd_restart,
    cmd_start,
    cmd_stats,
    cmd_stop,
    cmd_top,
    cmd_wait,
)
from ._images_cli import add_image_verbs, pull_with_progress
from ._logopts import parse_size
from ._logopts import parse_time as parse_log_time
from ._policy import SpecPolicy
from ._protocol import EventAction
from .gateway_client import DEFAULT_TIMEOUT, DEFAULT_URL, GatewayClient, StdioSession

# A verb: parsed arguments in, exit code out (run under trio.run).
Verb = Callable[[argparse.Namespace], Awaitable[int]]

_json = msgspec.json.Encoder()


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
        # Docker's default set (chown, ping, ...) now that the seccomp profile confines it;
        # an operator may narrow it to runc's minimal three.
        base_capabilities=(
            DEFAULT_CAPABILITIES
            if args.default_capabilities == "minimal"
            else CONTAINERD_DEFAULT_CAPABILITIES
        ),
    )


# -- client verbs --------------------------------------------------------------------------


# The shared pieces moved to _clibase; these names stay for the modules that import them.
_gateway = open_gateway
_say = say


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


async def _copy_output(session: StdioSession) -> None:
    async for channel, data in session.output_views():
        _write_all(sys.stdout.fileno() if channel == 1 else sys.stderr.fileno(), data)


def _dropped_verdict(session: StdioSession, allow_dropped: bool) -> bool:
    """Warn about dropped output; True when that must fail the command."""
    if not session.dropped:
        return False
    _say(
        f"warning: {session.dropped} bytes of output were dropped ("
        f"{len(session.drop_reports)} gap(s): lossy log mode, or lost before serve could "
        "keep them)"
    )
    return not allow_dropped


class _NotATty(Exception):
    """docker's "the input device is not a TTY" (exit 1)."""


def _check_tty(args: argparse.Namespace) -> None:
    if args.interactive and args.tty and not sys.stdin.isatty():
        raise _NotATty("the input device is not a TTY")


def _is_directory_rootfs(image: str) -> bool:
    # Image references never start with "/" or "."; directories (under --rootfs-root) do.
    return image.startswith(("/", "./", "../")) or image == "."


def _create_params(args: argparse.Namespace, name: str) -> dict[str, Any]:
    if args.init:
        raise InvalidArgument(
            "--init is not supported: it needs an init binary (docker-init/tini) in the "
            "container, which the busybox rootfs lacks; a shell `trap` or `exec` in the "
            "command reaps and forwards signals instead"
        )
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
    env = resolve_env(args.env or (), args.env_file or (), os.environ)
    if env:
        params["env"] = env
    if args.workdir:
        params["cwd"] = validate_workdir(args.workdir)
    if args.memory:
        params["memory_limit"] = parse_bytes(args.memory)
    if args.user:
        params["user"] = user_param(args.user)
    if args.hostname:
        params["hostname"] = args.hostname
    if args.stop_signal:
        params["stop_signal"] = args.stop_signal
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
    if args.log_execs:
        log["execs"] = True
    if log:
        params["log"] = log
    if args.restart and args.restart != "no":
        if args.rm:
            raise InvalidArgument("Conflicting options: --restart and --rm")
        params["restart"] = args.restart
    if args.rm:
        params["auto_remove"] = True
    return params


async def _create(gw: GatewayClient, args: argparse.Namespace, params: dict[str, Any]) -> None:
    try:
        await gw.call("container.create", params)
    except NotFound:
        if "image" not in params:
            raise
        # Like docker: an image that is not there is pulled first.
        _say(f"Unable to find image '{args.image}' locally")
        await pull_with_progress(gw, args.image)
        await gw.call("container.create", params)


def _container_name(args: argparse.Namespace) -> str:
    return validate_name(args.name) if args.name else f"run-{secrets.token_hex(4)}"


async def cmd_create(args: argparse.Namespace) -> int:
    name = _container_name(args)
    params = _create_params(args, name)
    async with _gateway(args) as gw:
        await _create(gw, args, params)
    print(name)
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    _check_tty(args)
    name = _container_name(args)
    params = _create_params(args, name)
    detach_keys = parse_detach_keys(args.detach_keys) if args.tty and args.interactive else None
    async with _gateway(args) as gw:
        await _create(gw, args, params)
        if args.detach:
            try:
                await gw.call("task.start", {"id": name, "stdin": args.interactive or args.tty})
            except ContainerdActorsError as exc:
                _say(f"cannot start {name}: {exc}")
                if args.rm:
                    with contextlib.suppress(ContainerdActorsError):
                        await gw.call("container.delete", {"id": name})
                return _start_exit_code(exc)
            print(name)
            return 0
        result: StreamResult | None = None
        try:
            with forwarded_signals(args.sig_proxy) as signals:
                try:
                    started = await gw.call(
                        "task.start",
                        {"id": name, "stdin": args.interactive or args.tty, "attach": True},
                    )
                except ContainerdActorsError as exc:
                    _say(f"cannot start {name}: {exc}")
                    return _start_exit_code(exc)
                with raw_terminal(args.tty and args.interactive):
                    result = await stream(
                        gw,
                        name,
                        None,
                        stdin=args.interactive,
                        tty=args.tty,
                        signals=signals,
                        detach_keys=detach_keys,
                        ticket=started["stdio"],
                        allow_dropped=args.allow_dropped,
                    )
            if result.detached:
                return 0
            if result.failure is not None:
                _say(result.failure)
            if result.code is not None:
                return result.code
            try:
                return int((await gw.call("task.wait", {"id": name}))["code"])
            except NotFound:
                _say(f"{name} was removed before its exit status was read")
                return EXIT_DAEMON_ERROR
        finally:
            if args.rm and (result is None or not result.detached):
                # The server removes it too (auto_remove); whoever comes second sees NotFound.
                with trio.CancelScope(shield=True):
                    await _remove_quietly(gw, name)


async def _remove_quietly(gw: GatewayClient, name: str) -> None:
    for method in ("task.wait", "task.delete", "container.delete"):
        try:
            await gw.call(method, {"id": name})
        except NotFound:
            continue
        except ContainerdActorsError as exc:
            _say(f"removing {name}: {exc}")
            return


async def cmd_exec(args: argparse.Namespace) -> int:
    _check_tty(args)
    exec_id = f"exec-{secrets.token_hex(4)}"
    params: dict[str, Any] = {
        "id": args.container,
        "exec_id": exec_id,
        "args": args.command,
        "terminal": args.tty,
        "stdin": args.interactive or args.tty,
    }
    env = resolve_env(args.env or (), args.env_file or (), os.environ)
    if env:
        params["env"] = env
    if args.workdir:
        params["cwd"] = validate_workdir(args.workdir)
    if args.user:
        uid, gid = parse_user(args.user)
        params["user"] = {"uid": uid, "gid": gid}
    detach_keys = parse_detach_keys(args.detach_keys) if args.tty and args.interactive else None
    async with _gateway(args) as gw:
        try:
            await gw.call("process.exec", params)
        except ContainerdActorsError as exc:
            _say(f"cannot exec in {args.container}: {exc}")
            return _start_exit_code(exc)
        if args.detach:
            return 0
        with forwarded_signals(True) as signals, raw_terminal(args.tty and args.interactive):
            result = await stream(
                gw,
                args.container,
                exec_id,
                stdin=args.interactive,
                tty=args.tty,
                signals=signals,
                detach_keys=detach_keys,
            )
        if result.detached:
            return 0
        if result.failure is not None:
            _say(result.failure)
        status = await gw.call("process.wait", {"id": args.container, "exec_id": exec_id})
        await gw.call("process.delete", {"id": args.container, "exec_id": exec_id})
        return int(status["code"]) if result.code is None else result.code


async def cmd_attach(args: argparse.Namespace) -> int:
    async with _gateway(args) as gw:
        info = await gw.call("container.inspect", {"id": args.container})
        terminal = bool(info.get("terminal"))
        forward_stdin = not args.no_stdin
        if terminal and forward_stdin and not sys.stdin.isatty():
            raise _NotATty("the input device is not a TTY")
        keys = parse_detach_keys(args.detach_keys) if terminal and forward_stdin else None
        with (
            forwarded_signals(args.sig_proxy) as signals,
            raw_terminal(terminal and forward_stdin),
        ):
            result = await stream(
                gw,
                args.container,
                None,
                stdin=forward_stdin,
                tty=terminal,
                signals=signals,
                detach_keys=keys,
                allow_dropped=args.allow_dropped,
            )
    if result.detached:
        return 0
    if result.failure is not None:
        _say(result.failure)
    return 0 if result.code is None else result.code


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
                            f"container {container_id} is running: stop it "
                            f"(containerd-actors stop {container_id}) or use --force"
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


async def cmd_logs(args: argparse.Namespace) -> int:
    wall = time.time_ns()  # --since 10m means ten minutes of the wall clock
    options: dict[str, Any] = {"follow": args.follow, "timestamps": args.timestamps}
    if args.tail != "all":
        options["tail"] = int(args.tail)
    if args.since:
        options["since"] = parse_log_time(args.since, now_ns=wall)
    if args.until:
        options["until"] = parse_log_time(args.until, now_ns=wall)
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


_EVENT_FILTERS = ("container", "event", "label")


def _event_filters(entries: Sequence[str]) -> dict[str, list[str]]:
    actions = [str(action) for action in EventAction]
    filters: dict[str, list[str]] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or key not in _EVENT_FILTERS:
            raise InvalidArgument(
                f"invalid filter {entry!r}: use container=ID, event=ACTION or label=KEY[=VALUE]"
            )
        if key == "event" and value not in actions:
            raise InvalidArgument(
                f"invalid filter {entry!r}: unknown event {value!r}; "
                f"events are {', '.join(actions)}"
            )
        filters.setdefault(key, []).append(value)
    return filters


def _event_time(event: dict[str, Any]) -> str:
    nanos = int(event.get("timeNano") or int(event.get("time", 0)) * 10**9)
    when = dt.datetime.fromtimestamp(nanos // 10**9, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos % 10**9:09d}Z"


async def cmd_events(args: argparse.Namespace) -> int:
    filters = _event_filters(args.filter)
    now_ns = time.time_ns()
    since = parse_time(args.since, flag="--since") if args.since else None
    until = parse_time(args.until, flag="--until") if args.until else None
    if until is not None and since is None and until <= now_ns:
        since = 0  # docker: --until alone in the past shows what is kept up to then
    deadline = math.inf if until is None else trio.current_time() + (until - now_ns) / 1e9
    async with _gateway(args) as gw, gw.subscribe(filters or None, since=since) as events:
        # The kept events come first and are shown whatever the deadline; then live ones
        # until --until.
        for _ in range(gw.replayed):
            _print_event(args, await events.receive(), until)
        with trio.move_on_at(deadline):
            async for event in events:
                if not _print_event(args, event, until):
                    break
        if gw.connection_lost:
            _say("the control plane went away; no more events")
            return EXIT_STREAM_FAILED
    return 0


def _print_event(args: argparse.Namespace, event: dict[str, Any], until: int | None) -> bool:
    if until is not None and int(event.get("timeNano", 0)) > until:
        return False
    if args.format == "json":
        print_json(event)
        return True
    attributes = ", ".join(f"{k}={v}" for k, v in event["Actor"]["Attributes"].items())
    print(
        f"{_event_time(event)} container {event['Action']} {event['Actor']['ID']} ({attributes})",
        flush=True,
    )
    return True


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
    parser = _Parser(
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
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up connecting (and on the handshake) after this long (default %(default)s)",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)

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
        "--default-capabilities",
        choices=("docker", "minimal"),
        default="docker",
        help="capabilities every container gets: docker's default 14 (chown, setuid, "
        "net_raw for ping, ...) or runc's minimal 3 (default %(default)s)",
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

    def verb(
        name: str, helptext: str, example: str, handler: Verb, *, short_help: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=helptext,
            description=helptext[0].upper() + helptext[1:] + ".",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            # run and create keep -h for --hostname, as docker does.
            add_help=short_help,
        )
        if not short_help:
            p.add_argument("--help", action="help", help="show this help message and exit")
        p.set_defaults(handler=handler)
        return p

    def format_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--format", choices=("table", "json"), default="table", help="json: one object per line"
        )

    def terminal_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
        p.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
        p.add_argument(
            "--detach-keys",
            default=DEFAULT_DETACH_KEYS,
            help="keys that detach from a terminal session (default %(default)s)",
        )

    def env_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-e",
            "--env",
            action="append",
            metavar="KEY[=VALUE]",
            help="set a variable; KEY alone copies it from this environment (repeatable)",
        )
        p.add_argument("--env-file", action="append", metavar="FILE", help="KEY=VALUE lines")
        p.add_argument("-w", "--workdir", help="working directory inside the container")
        p.add_argument(
            "-u",
            "--user",
            help="USER[:GROUP]: ids, or names looked up in the image's /etc/passwd and "
            "/etc/group (exec: UID[:GID] only)",
        )

    def sig_proxy(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--sig-proxy",
            type=_boolean,
            nargs="?",
            const=True,
            default=True,
            metavar="BOOL",
            help="send signals this command receives on to the process (default true)",
        )

    def create_opts(p: argparse.ArgumentParser) -> None:
        terminal_opts(p)
        env_opts(p)
        p.add_argument("--rm", action="store_true", help="remove the container when it exits")
        p.add_argument("--name", help="container id (default run-<random>)")
        p.add_argument("-l", "--label", action="append", help="KEY=VALUE label (repeatable)")
        p.add_argument("-m", "--memory", help="memory limit: bytes or 512k, 64m, 1g")
        p.add_argument("-h", "--hostname", help="hostname (default: the container id)")
        p.add_argument("--stop-signal", help="what stop sends first (default SIGTERM)")
        p.add_argument("--init", action="store_true", help="not supported (see the message)")
        p.add_argument(
            "--restart",
            type=_restart_policy,
            help="no (default), always, unless-stopped or on-failure[:N]; the server "
            "restarts the container when it exits, even with no client attached",
        )
        p.add_argument(
            "--log-max-size", type=parse_size, help="this container's log file size (e.g. 10m)"
        )
        p.add_argument("--log-max-files", type=int, help="this container's log files kept")
        p.add_argument(
            "--log-mode",
            choices=("blocking", "lossy"),
            default="blocking",
            help="blocking (default): the container waits when its log cannot keep up; "
            "lossy: output is dropped instead, and readers are told how much",
        )
        p.add_argument(
            "--log-buffer-size",
            type=parse_size,
            help="output held in memory before blocking or dropping (default 1m)",
        )
        p.add_argument(
            "--log-execs",
            action="store_true",
            help="also keep what `exec` sessions print in this container's log (default: "
            "only the main process's output, as docker)",
        )
        p.add_argument(
            "--entrypoint",
            help="replace the image's ENTRYPOINT (and drop its CMD); '' clears it",
        )
        p.add_argument(
            "image",
            metavar="IMAGE",
            help="an image (busybox is built in; others are pulled when missing) or a rootfs "
            "directory (/path, ./path) under an allowed root",
        )
        p.add_argument("command", nargs=argparse.REMAINDER, help="command (after --)")

    def allow_dropped(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--allow-dropped",
            action="store_true",
            help="dropped output (lossy mode) is a warning, not a failure",
        )

    run = verb(
        "run",
        "create and start a container, print its output",
        "containerd-actors run --rm busybox -- sh -c 'exit 3'; echo $?   # 3",
        cmd_run,
        short_help=False,
    )
    run.add_argument("-d", "--detach", action="store_true", help="print the id and return")
    sig_proxy(run)
    allow_dropped(run)
    create_opts(run)
    create = verb(
        "create",
        "create a container without starting it",
        "containerd-actors create --name web busybox -- httpd -f -p 8080",
        cmd_create,
        short_help=False,
    )
    create_opts(create)

    exec_ = verb(
        "exec",
        "run a command in a running container",
        "containerd-actors exec -it -e TERM web -- sh",
        cmd_exec,
    )
    terminal_opts(exec_)
    env_opts(exec_)
    exec_.add_argument("-d", "--detach", action="store_true", help="run in the background")
    exec_.add_argument("container")
    exec_.add_argument("command", nargs=argparse.REMAINDER, help="command (after --)")

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
    allow_dropped(logs)
    logs.add_argument("container")
    logs.set_defaults(handler=cmd_logs)

    attach = verb(
        "attach",
        "attach this terminal to a container's stdio (output from now on)",
        "containerd-actors attach web   # detach with Ctrl-P Ctrl-Q",
        cmd_attach,
    )
    attach.add_argument("--no-stdin", action="store_true", help="do not forward stdin")
    attach.add_argument("-i", "--interactive", action="store_true", help=argparse.SUPPRESS)
    attach.add_argument(
        "--detach-keys",
        default=DEFAULT_DETACH_KEYS,
        help="keys that detach (default %(default)s)",
    )
    sig_proxy(attach)
    allow_dropped(attach)
    attach.add_argument("container")

    add_image_verbs(sub, _gateway)

    ps = verb("ps", "list containers", "containerd-actors ps -a --filter status=exited", cmd_ps)
    ps.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    ps.add_argument("-q", "--quiet", action="store_true", help="only ids")
    ps.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        help="id=, name=, label=KEY[=VALUE], status=(created|running|paused|exited), exited=CODE",
    )
    ps.add_argument("--no-trunc", action="store_true", help="do not shorten the command")
    format_opt(ps)

    kill = verb("kill", "signal containers", "containerd-actors kill -s HUP web", cmd_kill)
    kill.add_argument(
        "-s",
        "--signal",
        default="KILL",
        help="signal name or number "
        "(default KILL; note PID 1 ignores signals it has no handler for)",
    )
    kill.add_argument("containers", nargs="+")

    for name, helptext, handler in (
        ("stop", "stop containers: the stop signal, then SIGKILL after -t", cmd_stop),
        ("restart", "stop, then start containers", cmd_restart),
    ):
        p = verb(name, helptext, f"containerd-actors {name} -t 2 web", handler)
        p.add_argument(
            "-t",
            "--time",
            "--timeout",
            type=_non_negative,
            help="seconds to wait before SIGKILL (default 10)",
        )
        p.add_argument("-s", "--signal", help="signal to send first (default: the stop signal)")
        p.add_argument("containers", nargs="+")
    for name, helptext, handler in (
        ("start", "start stopped or created containers", cmd_start),
        ("pause", "freeze every process of containers", cmd_pause),
        ("unpause", "thaw paused containers", cmd_pause),
        ("wait", "wait for containers to exit, print their exit codes", cmd_wait),
    ):
        verb(name, helptext, f"containerd-actors {name} web", handler).add_argument(
            "containers", nargs="+"
        )

    rm = verb(
        "rm", "remove containers (stopped ones, or -f)", "containerd-actors rm -f web", cmd_rm
    )
    rm.add_argument("-f", "--force", action="store_true", help="kill a running task first")
    rm.add_argument("containers", nargs="+")

    inspect = verb(
        "inspect",
        "show containers in docker's inspect shape",
        "containerd-actors inspect -f '{{.State.ExitCode}}' web",
        cmd_inspect,
    )
    inspect.add_argument(
        "-f", "--format", help="json (one object per line) or a template such as {{.State.Pid}}"
    )
    inspect.add_argument("containers", nargs="+")

    top = verb("top", "list a container's processes", "containerd-actors top web", cmd_top)
    top.add_argument("container")
    format_opt(top)

    cp = verb(
        "cp",
        "copy files between a container and this host (through the container's tar)",
        "containerd-actors cp web:/etc/hostname ./hostname",
        cmd_cp,
    )
    cp.add_argument("source", help="CONTAINER:PATH or a local path")
    cp.add_argument("destination", help="CONTAINER:PATH, a local path, or - for a tar on stdout")

    events = verb(
        "events",
        "stream events (docker's fields + containerd topic)",
        "containerd-actors events --since 10m --filter event=die",
        cmd_events,
    )
    events.add_argument(
        "--filter",
        action="append",
        default=[],
        help="container=ID, event=ACTION (create, start, die, oom, exec_create, "
        "exec_start, exec_die, pause, unpause) or label=KEY[=VALUE]",
    )
    events.add_argument("--since", help="also events kept since then (RFC 3339, unix, or 10m)")
    events.add_argument("--until", help="stop at that time (RFC 3339, unix, or a duration ago)")
    format_opt(events)

    stats = verb(
        "stats",
        "live CPU, memory and pids of containers",
        "containerd-actors stats --no-stream web",
        cmd_stats,
    )
    stats.add_argument("--no-stream", action="store_true", help="print one sample and exit")
    stats.add_argument("containers", nargs="*", help="default: every running container")
    format_opt(stats)

    version = verb(
        "version",
        "containerd's and the protocol's versions",
        "containerd-actors version",
        cmd_version,
    )
    format_opt(version)
    return parser


def _restart_policy(text: str) -> str:
    try:
        return str(ContainerRestartPolicy.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 125, as docker's do (argparse would exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_DAEMON_ERROR, f"{self.prog}: error: {message}\nSee '{self.prog} --help'.\n")


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
    except _NotATty as exc:
        _say(str(exc))
        return 1
    except (ContainerdActorsError, ValueError) as exc:
        _say(str(exc))
        return EXIT_DAEMON_ERROR
    return code
