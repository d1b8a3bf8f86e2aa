"""Filesystem mounts as containerd hands them out (``containerd.types.Mount``).

A snapshot's mounts (from Snapshots.Prepare or Snapshots.Mounts) become a task's rootfs: they
go to Tasks.Create, and containerd mounts them at the bundle's ``rootfs`` directory.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .pb.containerd.types import mount_pb2

__all__ = ["Mount", "mounts_from_proto", "mounts_to_proto"]


class Mount(msgspec.Struct, frozen=True, kw_only=True):
    """One mount: ``type`` (``overlay``, ``bind``...), ``source`` and ``options``."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""


def mounts_to_proto(mounts: Iterable[Mount]) -> list[mount_pb2.Mount]:
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


def mounts_from_proto(mounts: Iterable[mount_pb2.Mount]) -> list[Mount]:
    return [
        Mount(type=m.type, source=m.source, options=tuple(m.options), target=m.target)
        for m in mounts
    ]
