"""The root of the actor tree and the `containerd-actors` command line.

Commands:
    containerd-actors run [--rm] [ROOTFS] -- CMD...   run one container and print its output
    containerd-actors version                       containerd's version

When no containerd answers at ``--address`` (default /run/containerd/containerd.sock), the
command starts a private containerd under the state directory and stops it on exit, so a
fresh machine with the Debian packages containerd, runc and busybox-static just works.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from actors import Backend, Client, ContainerdActorsError, DirectIO, build_spec, open_client
from actors._embedded import PrivateContainerd, build_busybox_rootfs, missing_host_tools
from actors._remote import DEFAULT_ADDRESS
from actors._supervision import RestartLimitExceeded, RestartPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

DEFAULT_NAMESPACE = "containerd-actors"
__all__ = ["RestartLimitExceeded", "RestartPolicy", "main", "open_supervisor"]
EXIT_DAEMON_ERROR = 125


@contextlib.asynccontextmanager
async def open_supervisor(
    address: str = DEFAULT_ADDRESS,
    namespace: str = DEFAULT_NAMESPACE,
    backend: Backend | None = None,
    *,
    state_dir: str | None = None,
    restart_policy: RestartPolicy | None = None,
    rpc_deadline: float = 30.0,
) -> AsyncIterator[Client]:
    """The root of the actor tree: restore every container of ``namespace``, then supervise.

    One nursery owns the event router and one actor per container. At start the namespace
    is restored with Containers.List + Tasks.List (stdio re-opened, missed exits reported
    once); a crashing actor is restarted from containerd's state under ``restart_policy``
    (one-for-one) and past its limit the supervisor fails upward with
    :class:`RestartLimitExceeded`. Cancelling or leaving the block stops supervising: the
    containers keep running and the next supervisor picks them up.
    """
    async with open_client(
        address,
        namespace,
        backend,
        state_dir=state_dir,
        rpc_deadline=rpc_deadline,
        restore=True,
        restart_policy=restart_policy or RestartPolicy(),
    ) as client:
        yield client


def default_state_root() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/containerd-actors")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "containerd-actors"


def _answers(address: str) -> bool:
    if not address.startswith("/"):
        return True  # host:port: let the client report what happens
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


@contextlib.asynccontextmanager
async def containerd_address(
    address: str | None, state_root: Path, *, quiet: bool = False
) -> AsyncIterator[str]:
    """Yield a containerd address: the given/standard one if it answers, else an embedded one."""
    wanted = address or DEFAULT_ADDRESS
    if _answers(wanted):
        yield wanted
        return
    if address is not None:
        raise SystemExit(f"containerd-actors: no containerd answers at {address}")
    missing = missing_host_tools()
    if missing:
        raise SystemExit(
            "containerd-actors: no containerd is running and an embedded one needs "
            + ", ".join(missing)
            + " (apt-get install containerd runc busybox-static)"
        )
    daemon = PrivateContainerd(state_root / "embedded")
    if not quiet:
        print(f"starting an embedded containerd at {daemon.address}", file=sys.stderr)
    await trio.to_thread.run_sync(daemon.start)
    try:
        yield daemon.address
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(daemon.stop)


async def _copy_output(source: DirectIO, sink_out: int, sink_err: int) -> None:
    async def copy(pipe: object, fd: int) -> None:
        from actors.stdio import OutputPipe

        assert isinstance(pipe, OutputPipe)
        while chunk := await pipe.receive_some():
            os.write(fd, chunk)

    async with trio.open_nursery() as nursery:
        if source.stdout is not None:
            nursery.start_soon(copy, source.stdout, sink_out)
        if source.stderr is not None:
            nursery.start_soon(copy, source.stderr, sink_err)


async def cmd_run(args: argparse.Namespace) -> int:
    state_root = Path(args.state_dir) if args.state_dir else default_state_root()
    rootfs = (
        Path(args.rootfs)
        if args.rootfs != "busybox"
        else build_busybox_rootfs(state_root / "rootfs" / "busybox")
    )
    command = args.command or ["sh"]
    name = args.name or f"run-{secrets.token_hex(4)}"
    async with (
        containerd_address(args.address, state_root) as address,
        open_client(address, args.namespace, state_dir=str(state_root / "io")) as client,
    ):
        spec = build_spec(rootfs, command, env=args.env or None, cwd=args.workdir)
        container = await client.new_container(name, spec)
        try:
            task = await container.start()
            if task.io is not None:
                await _copy_output(task.io, sys.stdout.fileno(), sys.stderr.fileno())
            status = await task.wait()
            await task.delete()
        finally:
            if args.rm:
                with trio.CancelScope(shield=True), contextlib.suppress(ContainerdActorsError):
                    await container.delete()
        return status.code


async def cmd_version(args: argparse.Namespace) -> int:
    state_root = Path(args.state_dir) if args.state_dir else default_state_root()
    async with (
        containerd_address(args.address, state_root) as address,
        open_client(address, args.namespace, state_dir=str(state_root / "io")) as client,
    ):
        version, revision = await client.version()
        print(f"containerd {version} ({revision})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="containerd-actors",
        description="Run containers through containerd, one Trio actor per container.",
        epilog="Example: containerd-actors run --rm busybox -- sh -c 'echo hello'",
    )
    parser.add_argument(
        "--address",
        help=f"containerd socket (default {DEFAULT_ADDRESS}; "
        "an embedded containerd is started when none answers)",
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help=f"containerd namespace (default {DEFAULT_NAMESPACE})",
    )
    parser.add_argument("--state-dir", help="where FIFOs, rootfs and the embedded containerd live")
    sub = parser.add_subparsers(dest="verb", required=True)

    run = sub.add_parser(
        "run",
        help="run a container and print its output",
        description="Create, start, wait for and delete one container; "
        "exits with the container's exit code.",
        epilog="Example: containerd-actors run --rm busybox -- ls /",
    )
    run.add_argument(
        "rootfs",
        nargs="?",
        default="busybox",
        help="a rootfs directory, or 'busybox' (built from the host's static busybox; the default)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    run.add_argument("--rm", action="store_true", help="delete the container when it exits")
    run.add_argument("--name", help="container id (default: run-<random>)")
    run.add_argument("-e", "--env", action="append", help="environment KEY=VALUE (repeatable)")
    run.add_argument("-w", "--workdir", default="/", help="working directory in the container")
    run.set_defaults(handler=cmd_run)

    version = sub.add_parser("version", help="print containerd's version")
    version.set_defaults(handler=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    try:
        code: int = trio.run(args.handler, args)
    except ContainerdActorsError as exc:
        print(f"containerd-actors: {exc}", file=sys.stderr)
        return EXIT_DAEMON_ERROR
    except ValueError as exc:
        print(f"containerd-actors: {exc}", file=sys.stderr)
        return EXIT_DAEMON_ERROR
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
