"""The root of the actor tree and the `containerd-actors` program, at the top of the repository.

``containerd-actors serve`` supervises a containerd namespace and serves the websocket
control plane; when no containerd answers at ``--address`` (default
/run/containerd/containerd.sock) it starts a private one under the state directory and stops
it on exit, so a fresh machine with the Debian packages containerd, runc and busybox-static
just works. The other verbs (run, ps, exec, kill, rm, logs, attach, events, stats, version)
are clients of ``serve``.

The composition itself (embedded daemon, client with router and actors, control plane,
signals, shutdown) is ``actors/_serve.py``: it must ship in the wheel for the installed
console script, and this file must not (a top-level ``supervisor`` module could shadow or be
shadowed by another distribution's). From a checkout, ``python supervisor.py serve`` and
``from supervisor import open_supervisor`` work as before. The library never imports this file.
"""

from __future__ import annotations

import sys

from actors._serve import DEFAULT_NAMESPACE, main, open_supervisor, serve
from actors.core._supervision import RestartLimitExceeded, RestartPolicy

__all__ = [
    "DEFAULT_NAMESPACE",
    "RestartLimitExceeded",
    "RestartPolicy",
    "main",
    "open_supervisor",
    "serve",
]

if __name__ == "__main__":
    sys.exit(main())
