"""index -> index -> manifest: every level stored with its GC labels (pull and load).

containerd's garbage collector keeps content only through labels: an image record keeps its
target, a blob keeps what its ``containerd.io/gc.ref.content.*`` labels name. If an inner
index were missing or unlabelled, GC would take the manifest, config and layers of an image
that still exists. After ``rmi`` + GC nothing may be left.
"""

from __future__ import annotations

import dataclasses
import io
import urllib.request
from pathlib import Path

import pytest
import trio

from actors import Client, open_client
from actors.containerd._embedded import PrivateContainerd
from actors.images._digest import digest_of
from actors.images._media import OCI_INDEX, Descriptor, Index, encode
from actors.images._platform import host_platform, parse_platform
from tests.imagebuilder import BuiltImage, build_image, layout_tar, skopeo_push, write_layout
from tests.registry_fixture import LocalRegistry, require_tools

from ...conftest import unique_id
from .ctrtools import ctr_lines, snapshots

pytestmark = pytest.mark.integration

HOST = str(host_platform())
OTHER = "linux/arm64" if HOST != "linux/arm64" else "linux/amd64"


def put_manifest(registry: LocalRegistry, repository: str, tag: str, body: bytes) -> int:
    """PUT an index by tag with plain HTTP (not skopeo): the HTTP status."""
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repository}/manifests/{tag}",
        data=body,
        method="PUT",
        headers={"Content-Type": OCI_INDEX},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def nested(inner: BuiltImage) -> tuple[BuiltImage, bytes]:
    """``inner`` (a two-platform index) wrapped in an outer index: (image, outer bytes)."""
    host = parse_platform(HOST)
    entry = Descriptor(
        media_type=OCI_INDEX, digest=inner.target.digest, size=inner.target.size, platform=host
    )
    outer_bytes = encode(Index(schema_version=2, media_type=OCI_INDEX, manifests=[entry]))
    outer = Descriptor(media_type=OCI_INDEX, digest=digest_of(outer_bytes), size=len(outer_bytes))
    blobs = {**inner.blobs, outer.digest: outer_bytes}
    return dataclasses.replace(inner, target=outer, blobs=blobs), outer_bytes


async def check_kept_then_collected(
    client: Client, containerd: PrivateContainerd, name: str, built: BuiltImage, inner: str
) -> None:
    store = client.images.store
    with trio.fail_after(60):
        await store.collect_garbage()
    # Every level survived GC: the outer index, the inner one, manifest, config, layers.
    content = set(ctr_lines(containerd, client.namespace, "content", "ls"))
    manifest = built.manifests[HOST]
    config = built.configs[HOST]
    assert {built.target.digest, inner, manifest.digest, *(d.digest for d in built.layers)} <= (
        content
    )
    assert config.rootfs.diff_ids == built.diff_ids
    # A fresh client (no cached documents) reads the whole chain back from containerd.
    async with open_client(
        containerd.address, client.namespace, state_dir=client.state_dir
    ) as fresh:
        image = await fresh.images.get(name)
        assert image.manifest.digest == manifest.digest
        container = await fresh.new_container(unique_id("nest"), image=image)
        with trio.fail_after(30):
            task = await container.start()
            assert task.io is not None and task.io.stdout is not None
            out = await task.io.stdout.read_all()
            assert (await task.wait()).code == 0
        await task.delete()
        await container.delete()
    assert out == b"layer 1\n"
    await client.images.remove(name)
    with trio.fail_after(60):
        await store.collect_garbage()
    for kind in ("images", "content", "leases"):
        assert ctr_lines(containerd, client.namespace, kind, "ls") == [], kind
    assert snapshots(containerd, client) == []


async def test_load_of_a_nested_index_keeps_every_level_until_rmi(
    ns_client: Client, containerd: PrivateContainerd, tmp_path: Path
) -> None:
    inner = build_image(tmp_path / "rootfs", platforms=(HOST, OTHER))
    built, _ = nested(inner)
    write_layout(built, tmp_path / "layout", "nested")
    (image,) = await ns_client.images.import_archive(
        io.BytesIO(layout_tar(tmp_path / "layout")), base_name="test/nested"
    )
    assert image.digest == built.target.digest
    await check_kept_then_collected(ns_client, containerd, image.name, built, inner.target.digest)


async def test_pull_of_a_nested_index_keeps_every_level_until_rmi(
    ns_client: Client,
    containerd: PrivateContainerd,
    registry: LocalRegistry,
    tmp_path: Path,
) -> None:
    require_tools("skopeo")
    inner = build_image(
        tmp_path / "rootfs", platforms=(HOST, OTHER), layout=tmp_path / "layout", tag="inner"
    )
    repository = f"nest/{unique_id('repo').replace('_', '-').lower()}"
    skopeo_push(tmp_path / "layout", "inner", f"{registry.host}/{repository}:inner")
    built, outer_bytes = nested(inner)
    assert put_manifest(registry, repository, "nested", outer_bytes) == 201
    reference = f"{registry.host}/{repository}:nested"
    with trio.fail_after(120):
        image = await ns_client.images.pull(reference)
    assert image.digest == built.target.digest
    await check_kept_then_collected(ns_client, containerd, reference, built, inner.target.digest)
