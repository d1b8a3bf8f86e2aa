"""``load`` of an archive with several images is all or nothing.

The second image of the archive has a corrupt layer: the load fails, no name is created or
re-pointed (an existing one keeps its old target), and once the lease is gone containerd's
GC leaves nothing of what the load wrote.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

from actors import Client
from actors.containerd._embedded import PrivateContainerd
from actors.errors import DataLoss
from actors.images._media import ANNOTATION_REF_NAME, OCI_INDEX, Descriptor, Index, encode
from actors.images._platform import host_platform
from tests.imagebuilder import BuiltImage, build_image, layout_tar

from ...conftest import unique_id
from .ctrtools import ctr_lines, snapshots

pytestmark = pytest.mark.integration

HOST = str(host_platform())


def archive_of(images: list[tuple[str, BuiltImage]], layout: Path) -> bytes:
    """One OCI layout tar holding every image, in order, each under its tag."""
    blob_dir = layout / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    entries = []
    for tag, image in images:
        for digest, data in image.blobs.items():
            (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
        entries.append(
            Descriptor(
                media_type=image.target.media_type,
                digest=image.target.digest,
                size=image.target.size,
                annotations={ANNOTATION_REF_NAME: tag},
            )
        )
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = Index(schema_version=2, media_type=OCI_INDEX, manifests=entries)
    (layout / "index.json").write_bytes(encode(index))
    return layout_tar(layout)


async def test_an_archive_with_a_corrupt_second_image_loads_nothing(
    ns_client: Client, containerd: PrivateContainerd, tmp_path: Path
) -> None:
    client = ns_client
    rootfs = tmp_path / "rootfs"
    base = f"test/{unique_id('atomic')}"
    old = build_image(rootfs, platforms=(HOST,), extra={"which": b"old\n"})
    (loaded,) = await client.images.import_archive(
        io.BytesIO(archive_of([("one", old)], tmp_path / "old")), base_name=base
    )
    assert loaded.digest == old.target.digest
    first = build_image(rootfs, platforms=(HOST,), extra={"which": b"new\n"})
    second = build_image(rootfs, platforms=(HOST,), extra={"which": b"corrupt\n"})
    bad_layer = second.layers[-1]
    data = bytearray(second.blobs[bad_layer.digest])
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the digest can tell
    second.blobs[bad_layer.digest] = bytes(data)
    tar = archive_of([("one", first), ("two", second)], tmp_path / "bad")
    before = ctr_lines(containerd, client.namespace, "images", "ls")
    with trio.fail_after(60), pytest.raises(DataLoss):
        await client.images.import_archive(io.BytesIO(tar), base_name=base)
    # No name created or re-pointed: ":one" still is the old image, ":two" does not exist.
    assert ctr_lines(containerd, client.namespace, "images", "ls") == before
    assert (await client.images.get(f"{base}:one")).digest == old.target.digest
    assert not await client.images.exists(f"{base}:two")
    assert ctr_lines(containerd, client.namespace, "leases", "ls") == []
    # GC now takes everything the failed load wrote; rmi of the old image takes the rest.
    await client.images.remove(f"{base}:one")
    with trio.fail_after(60):
        await client.images.store.collect_garbage()
    for kind in ("images", "content", "leases"):
        assert ctr_lines(containerd, client.namespace, kind, "ls") == [], kind
    assert snapshots(containerd, client) == []
