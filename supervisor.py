"""The root of the actor tree and the `containerd-actors` command line.

``containerd-actors serve`` supervises a containerd namespace and serves the websocket
control plane; when no containerd answers at ``--address`` (default
/run/containerd/containerd.sock) it starts a private one under the state directory and stops
it on exit, so a fresh machine with the Debian packages containerd, runc and busybox-static
just works. The other verbs (run, ps, exec, kill, rm, logs, attach, events, stats, version)
are clients of ``serve``; the CLI itself lives in ``actors/_cli.py``.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

from actors import Backend, Client, open_client
from actors.containerd._remote import DEFAULT_ADDRESS
from actors.core._supervision import RestartLimitExceeded, RestartPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

DEFAULT_NAMESPACE = "containerd-actors"
__all__ = ["RestartLimitExceeded", "RestartPolicy", "main", "open_supervisor"]


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


def main(argv: Sequence[str] | None = None) -> int:
    """The ``containerd-actors`` console script."""
    from actors.control._cli import run_cli

    return run_cli(argv)


if __name__ == "__main__":
    sys.exit(main())
