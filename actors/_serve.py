"""The program: the root of the actor tree and the composition behind ``containerd-actors serve``.

This module sits above every layer and is the only one that joins them: the containerd
connection (an embedded private containerd when none answers), the core (one client with
its event router and one actor per container, restored and supervised), and the control
plane (the websocket gateway), plus signals and an orderly shutdown. No layer imports it.

It lives inside the package so the installed ``containerd-actors`` console script finds it;
the repository's top-level ``supervisor.py`` re-exports it (``open_supervisor``, ``main``)
for scripts and tests run from a checkout, and is not installed: the wheel holds only
``actors``, so it neither shadows nor is shadowed by another distribution's ``supervisor``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import signal
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import trio

from .containerd._paths import DEFAULT_ADDRESS, default_state_root
from .control._cli import _say, load_or_create_token, run_cli, serve_policy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from .core._client import Client
    from .core._container import Backend
    from .core._shimgroups import ShimGroups
    from .core._supervision import RestartPolicy

# The daemon side (gRPC stubs, actors, gateway, registry client) is imported by the functions
# that run it: every CLI verb starts here, and a `ps` should not pay for `serve`.

DEFAULT_NAMESPACE = "containerd-actors"


@contextlib.asynccontextmanager
async def open_supervisor(
    address: str = DEFAULT_ADDRESS,
    namespace: str = DEFAULT_NAMESPACE,
    backend: Backend | None = None,
    *,
    state_dir: str | None = None,
    restart_policy: RestartPolicy | None = None,
    rpc_deadline: float = 30.0,
    shim_groups: ShimGroups | None = None,
) -> AsyncIterator[Client]:
    """The root of the actor tree: restore every container of ``namespace``, then supervise.

    One nursery owns the event router and one actor per container. At start the namespace
    is restored with Containers.List + Tasks.List (stdio re-opened, missed exits reported
    once); a crashing actor is restarted from containerd's state under ``restart_policy``
    (one-for-one) and past its limit the supervisor fails upward with
    :class:`RestartLimitExceeded`. ``shim_groups`` packs containers into shared runc shims
    (the annotation is set here only: control-plane requests carry none). Cancelling or
    leaving the block stops supervising: the containers keep running and the next
    supervisor picks them up.

    Today this is :func:`actors.open_client` with ``restore=True`` and a restart policy
    (both its defaults) and the program's default namespace.
    """
    from .core._client import open_client
    from .core._supervision import RestartPolicy

    async with open_client(
        address,
        namespace,
        backend,
        state_dir=state_dir,
        rpc_deadline=rpc_deadline,
        restore=True,
        restart_policy=restart_policy or RestartPolicy(),
        shim_groups=shim_groups,
    ) as client:
        yield client


async def serve(args: argparse.Namespace) -> int:
    """``containerd-actors serve``: supervise the namespace and serve the control plane."""
    from .containerd._embedded import containerd_address
    from .control._gateway_logs import LogManager
    from .control.gateway import Gateway, GatewayConfig
    from .core._logstore import LogConfig
    from .images._builtin import ensure_busybox_image

    state_root = Path(args.state_dir) if args.state_dir else default_state_root()
    token_file = Path(args.token_file) if args.token_file else state_root / "token"
    token = os.environ.get("CONTAINERD_ACTORS_TOKEN") or load_or_create_token(token_file)
    policy = serve_policy(args)
    # Our token, FIFOs and the embedded containerd (its sockets, bundles) live under the
    # state root; a containerd we were pointed at keeps its sockets next to its address.
    own_state = [str(state_root), str(token_file.parent)]
    socket_path = (args.address or "").removeprefix("unix://")
    if socket_path.startswith("/"):
        own_state.append(socket_path.rsplit("/", 1)[0] or "/")
    policy = msgspec.structs.replace(policy, protected_paths=(*policy.protected_paths, *own_state))
    host, _, port = args.listen.rpartition(":")
    config = GatewayConfig(
        token=token,
        policy=policy,
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        unix_socket=args.unix,
        allowed_origins=frozenset(args.allow_origin),
        files_dir=str(state_root / "files"),
    )
    log_config = LogConfig(max_size=args.log_max_size, max_files=args.log_max_files)
    logs = LogManager(state_root / "logs" / args.namespace, log_config)
    async with (
        containerd_address(args.address, state_root, progress=_say) as address,
        open_supervisor(
            address,
            args.namespace,
            state_dir=str(state_root / "io"),
            shim_groups=shim_groups_from(args),
        ) as client,
        trio.open_nursery() as nursery,
    ):
        client.images.insecure = tuple(args.insecure_registry)
        # The built-in busybox is an image in containerd's store (built in memory from the
        # host binary, imported only when no image of that name exists): every container
        # gets its own snapshot, and no directory a container wrote is ever touched here.
        busybox = await ensure_busybox_image(client.images)
        _say(f"image {busybox.name} ready ({busybox.id[:19]})")
        try:
            gateway = await nursery.start(Gateway(client, config, logs=logs).serve)
        except OSError as exc:
            place = config.unix_socket or f"{config.host}:{config.port}"
            reason = (
                "the address is already in use (is another serve running? choose --listen)"
                if exc.errno == errno.EADDRINUSE
                else exc.strerror or str(exc)
            )
            _say(f"cannot listen on {place}: {reason}")
            return 125
        where = (
            f"unix://{config.unix_socket}"
            if config.unix_socket
            else f"ws://{config.host}:{gateway.port}"
        )
        # The client finds the token through the same flags serve was given.
        client_flags = "".join(
            f" {flag} {shlex.quote(value)}"
            for flag, value in (("--state-dir", args.state_dir), ("--token-file", args.token_file))
            if value
        )
        hint = f"containerd-actors --url {where}{client_flags} run --rm busybox -- echo hello"
        # Signals are ours before the hint says Ctrl-C stops us.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            version, _ = await client.version()
            kept = f"{log_config.max_files} files of {log_config.max_size} bytes"
            print(
                textwrap.dedent(
                    f"""\
                    containerd-actors is serving namespace {args.namespace!r} (containerd {version})
                      control plane: {where}  (subprotocol containerd-actors.v1)
                      token file:    {token_file}
                      logs:          {logs.root} (per container: {kept})
                      supervising:   {len(client.containers())} existing container(s)
                    try:  {hint}
                    stop with Ctrl-C (containers keep running)"""
                ),
                flush=True,
            )
            async for signum in signals:
                _say(f"{signal.Signals(signum).name}: stopping (containers keep running)")
                break
        nursery.cancel_scope.cancel()
    return 0


def shim_groups_from(args: argparse.Namespace) -> ShimGroups | None:
    """``--shim-groups K --shim-group-size N`` as a policy (None: one shim per container)."""
    from .core._shimgroups import ShimGroups

    count = getattr(args, "shim_groups", 0)
    if not count:
        return None
    return ShimGroups(shims=count, max_per_shim=args.shim_group_size)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``containerd-actors`` console script: ``serve`` here, the other verbs in the CLI."""
    return run_cli(argv, serve=serve)
