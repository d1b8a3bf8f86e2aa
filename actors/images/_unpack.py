"""Unpack image layers into snapshots, and prepare containers' snapshots.

An image's layers become a chain of committed snapshots named by chain ID (image-spec):
ChainID(L0) = DiffID(L0), ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln)).
Per missing layer (:func:`apply_layer`), 3 RPCs::

    Snapshots.Prepare(key="extract-<random> <chainID>", parent=<previous chain ID>)
    Diff.Apply(layer blob, the mounts Prepare returned)   -> applied digest must be the diff ID
    Snapshots.Commit(name=<chainID>, key=<extract key>)

A failed layer removes its extract snapshot (one more RPC). Layers already unpacked are found
with one ``Snapshots.List`` whose filters name every chain ID, so an unpacked image costs one
RPC and a fresh one 1 + 3 per layer, plus one ``Content.Update`` that labels the config blob
with ``containerd.io/gc.ref.snapshot.<snapshotter>=<top chain ID>`` -- as containerd does, so
the collector keeps the chain as long as the image keeps the config. (Skip that update with
``config_digest=None`` when the config was committed with :func:`config_gc_labels` already.)

Under a lease, containerd adds the extract and committed snapshots to it, so nothing is
collected before the config label or the image record refers to it.

A container's snapshot (:func:`prepare_container_snapshot`) is one ``Snapshots.Prepare`` of
an active snapshot on the image's top chain ID; its mounts go to ``Tasks.Create`` as the rootfs.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from ..containerd._mounts import Mount, mounts_from_proto
from ..errors import AlreadyExists, DataLoss, InvalidArgument, NotFound
from ._types import Descriptor, DescriptorLike, config_gc_labels, validate_digest

if TYPE_CHECKING:
    from ._content import ContainerdImageServices

__all__ = [
    "NATIVE",
    "OVERLAYFS",
    "UnpackResult",
    "apply_layer",
    "chain_ids",
    "prepare_container_snapshot",
    "probe_snapshotter",
    "unpack",
    "unpacked_layers",
]

OVERLAYFS: Final = "overlayfs"
NATIVE: Final = "native"
APPLY_DEADLINE: Final = 3600.0
"""Diff.Apply of a big layer takes long; the caller's Trio scope is the real bound."""


class UnpackResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`unpack` did.

    Attributes:
        chain_id: the top chain ID (the parent of container snapshots).
        snapshotter: where the chain lives.
        applied: layers applied by this call.
        skipped: layers that were unpacked already.
    """

    chain_id: str
    snapshotter: str
    applied: int
    skipped: int


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of every prefix of ``diff_ids`` (bottom layer first)."""
    result: list[str] = []
    for diff_id in diff_ids:
        validate_digest(diff_id)
        if not result:
            result.append(diff_id)
        else:
            joined = f"{result[-1]} {diff_id}".encode()
            result.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return result


async def probe_snapshotter(services: ContainerdImageServices) -> str:
    """``overlayfs`` if containerd has it loaded (it loads only where overlay works), else
    ``native``. One RPC: a Stat of a key that cannot exist answers NotFound from a loaded
    snapshotter and InvalidArgument ("snapshotter not loaded") otherwise."""
    try:
        await services.snapshots_stat(OVERLAYFS, f"actors-probe-{secrets.token_hex(8)}")
    except NotFound:
        return OVERLAYFS
    except InvalidArgument:
        return NATIVE
    return OVERLAYFS


async def unpacked_layers(
    services: ContainerdImageServices, snapshotter: str, ids: Sequence[str]
) -> int:
    """How many bottom layers are unpacked already (one Snapshots.List, filters ORed)."""
    found = {
        info.name
        for info in await services.snapshots_list(
            snapshotter, [f'name=="{chain}"' for chain in ids]
        )
    }
    for index in range(len(ids), 0, -1):
        # A committed chain ID implies its whole parent chain.
        if ids[index - 1] in found:
            return index
    return 0


async def apply_layer(
    services: ContainerdImageServices,
    layer: DescriptorLike,
    diff_id: str,
    chain_id: str,
    parent: str,
    *,
    snapshotter: str,
    lease: str | None,
) -> bool:
    """Apply one layer on ``parent`` and commit it as ``chain_id``; False if it appeared
    meanwhile (someone else committed it). Removes its extract snapshot on any failure."""
    blob = Descriptor.of(layer)
    key = f"extract-{time.time_ns()}-{secrets.token_hex(3)} {chain_id}"
    remove_key = True
    try:
        try:
            mounts = await services.snapshots_prepare(snapshotter, key, parent, lease=lease)
        except trio.Cancelled:
            raise  # containerd may have made it: remove it below
        except BaseException:
            remove_key = False  # refused: nothing was made
            raise
        applied = await services.diff_apply(
            blob.to_proto(), mounts, lease=lease, deadline=APPLY_DEADLINE
        )
        if applied.digest != diff_id:
            raise DataLoss(
                f"layer {blob.digest}: its content is {applied.digest},"
                f" but the image config says {diff_id}",
                local=True,
            )
        try:
            await services.snapshots_commit(snapshotter, chain_id, key, lease=lease)
        except AlreadyExists:
            return False  # committed meanwhile by another unpack; ours goes below
        remove_key = False
        return True
    finally:
        if remove_key:
            with trio.CancelScope(shield=True), contextlib.suppress(NotFound):
                await services.snapshots_remove(snapshotter, key)


async def unpack(
    services: ContainerdImageServices,
    layers: Sequence[DescriptorLike],
    diff_ids: Sequence[str],
    *,
    snapshotter: str,
    config_digest: str | None,
    lease: str | None,
) -> UnpackResult:
    """Unpack ``layers`` (their blobs committed in this namespace) as a snapshot chain.

    Args:
        layers: the manifest's layer descriptors, bottom first.
        diff_ids: the config's ``rootfs.diff_ids``, one per layer.
        snapshotter: e.g. ``overlayfs`` or ``native``.
        config_digest: the config blob to label with the chain (None: it is labelled already).
        lease: lease id that holds the snapshots while the image is being made.

    Raises:
        InvalidArgument: layers and diff IDs do not pair up (nothing sent).
        DataLoss: a layer's content differs from its diff ID (its snapshot is removed).
    """
    if not layers:
        raise InvalidArgument("an image needs at least one layer", local=True)
    if len(layers) != len(diff_ids):
        raise InvalidArgument(
            f"the manifest has {len(layers)} layers but the config {len(diff_ids)} diff IDs",
            local=True,
        )
    for layer in layers:
        validate_digest(layer.digest)
    if config_digest is not None:
        validate_digest(config_digest)
    ids = chain_ids(diff_ids)
    done = await unpacked_layers(services, snapshotter, ids)
    applied = 0
    for index in range(done, len(ids)):
        parent = ids[index - 1] if index else ""
        if await apply_layer(
            services,
            layers[index],
            diff_ids[index],
            ids[index],
            parent,
            snapshotter=snapshotter,
            lease=lease,
        ):
            applied += 1
    if config_digest is not None:
        await services.content_update_labels(
            config_digest, config_gc_labels(snapshotter, ids[-1]), lease=lease
        )
    return UnpackResult(
        chain_id=ids[-1], snapshotter=snapshotter, applied=applied, skipped=len(ids) - applied
    )


async def prepare_container_snapshot(
    services: ContainerdImageServices,
    key: str,
    chain_id: str,
    *,
    snapshotter: str,
    lease: str | None,
    labels: Mapping[str, str],
) -> list[Mount]:
    """An active snapshot ``key`` whose parent is ``chain_id``; its mounts. One RPC."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"invalid snapshot key {key!r}", local=True)
    validate_digest(chain_id)
    mounts = await services.snapshots_prepare(
        snapshotter, key, chain_id, labels=labels, lease=lease
    )
    return mounts_from_proto(mounts)
