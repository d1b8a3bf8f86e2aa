"""What the image tests ask of containerd through ``ctr`` (an independent client), and the
RPC bookkeeping they share."""

from __future__ import annotations

import subprocess

from actors import Client
from actors.containerd._embedded import PrivateContainerd


def ctr(daemon: PrivateContainerd, namespace: str, *args: str) -> str:
    return subprocess.run(
        ["ctr", "-a", daemon.address, "-n", namespace, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def ctr_lines(daemon: PrivateContainerd, namespace: str, *args: str) -> list[str]:
    return ctr(daemon, namespace, *args, "-q").split()


def snapshots(daemon: PrivateContainerd, client: Client) -> list[str]:
    """Every snapshot (active and committed) of the client's namespace and snapshotter."""
    snapshotter = client.images.store._snapshotter or "overlayfs"
    out = ctr(daemon, client.namespace, "snapshots", "--snapshotter", snapshotter, "ls")
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def rpc_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
