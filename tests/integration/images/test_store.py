"""The containerd side of images, against the real containerd: content, images, leases, unpack.

Each test works in a namespace of its own and checks with ``ctr`` (an independent client)
that what it wrote is there, and that nothing is left once it is deleted and collected.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import trio

from actors import Client, build_spec, open_client
from actors.containerd._embedded import PrivateContainerd
from actors.core.spec import Root
from actors.errors import DataLoss, InvalidArgument
from actors.images._pb import snapshots_pb2
from actors.images._store import (
    CHUNK_SIZE,
    ContentStore,
    Descriptor,
    config_gc_labels,
    index_gc_labels,
    manifest_gc_labels,
)
from actors.images._unpack import NATIVE, OVERLAYFS, chain_ids

from ...conftest import unique_id
from .store_image import Image, build_image, descriptor, digest_of

NAMESPACE = "ca-store"
LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def ctr(daemon: PrivateContainerd, namespace: str, *args: str) -> list[str]:
    out = subprocess.run(
        ["ctr", "-a", daemon.address, "-n", namespace, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def rpc_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[start : start + size]


@pytest.fixture
async def ns_client(containerd: PrivateContainerd, io_dir: Path) -> AsyncIterator[Client]:
    """A client on a namespace of the test's own; after the test nothing may be left in it."""
    # A fixed name (the session's containerd is fresh, and each test must leave it empty):
    # the runc shim keeps one directory per namespace under /run/containerd/runc.
    namespace = NAMESPACE
    async with open_client(containerd.address, namespace, state_dir=str(io_dir)) as client:
        yield client
        store = ContentStore(client._remote)
        await store.collect_garbage()
    for kind in (("leases", "ls", "-q"), ("content", "ls", "-q"), ("images", "ls", "-q")):
        assert ctr(containerd, namespace, *kind) == [], kind
    assert ctr(containerd, namespace, "content", "active") == ["REF", "SIZE", "AGE"]
    for snapshotter in (OVERLAYFS, NATIVE):
        listed = ctr(containerd, namespace, "snapshots", "--snapshotter", snapshotter, "ls")
        assert listed[:3] == ["KEY", "PARENT", "KIND"] and len(listed) == 3


@pytest.fixture(scope="module")
def image(rootfs: Path) -> Image:
    return build_image(rootfs, {"hello.txt": b"hello from layer 2\n"})


def test_chain_ids() -> None:
    a, b = digest_of(b"a"), digest_of(b"b")
    assert chain_ids([a]) == [a]
    assert chain_ids([a, b]) == [a, digest_of(f"{a} {b}".encode())]


async def test_snapshotter_is_probed_once(ns_client: Client) -> None:
    store = ContentStore(ns_client._remote)
    before = ns_client.statistics().rpc.calls
    first = await store.snapshotter()
    assert await store.snapshotter() == first
    assert rpc_delta(before, ns_client.statistics().rpc.calls) == {"Snapshots.Stat": 1}
    filesystems = Path("/proc/filesystems").read_text().split()
    overlay = "overlay" in filesystems
    # Without overlay in the kernel containerd cannot load overlayfs: native it is.
    assert first in (OVERLAYFS, NATIVE)
    if not overlay:
        assert first == NATIVE
    assert await ContentStore(ns_client._remote, snapshotter=NATIVE).snapshotter() == NATIVE


@pytest.mark.parametrize("choice", [None, NATIVE])
async def test_image_round_trip_runs_a_container(
    ns_client: Client,
    containerd: PrivateContainerd,
    image: Image,
    tmp_path: Path,
    choice: str | None,
) -> None:
    client = ns_client
    ns = client.namespace
    store = ContentStore(client._remote, snapshotter=choice)
    name = "docker.io/library/store-test:1"
    manifest_desc, _ = image.manifest
    config_desc, _ = image.config
    layer_descs = [d for d, _ in image.layers]
    assert layer_descs[0].size > CHUNK_SIZE  # the chunked path (STAT, WRITE, COMMIT)

    with trio.fail_after(60):
        snapshotter = await store.snapshotter()
        before = client.statistics().rpc.calls
        async with store.open_lease() as lease:
            assert ctr(containerd, ns, "leases", "ls", "-q") == [lease]
            for desc, data in image.blobs():
                labels = (
                    manifest_gc_labels(config_desc, layer_descs) if desc is manifest_desc else None
                )
                result = await store.ingest(desc, chunks_of(data), labels=labels, lease=lease)
                assert not result.present
                assert result.written == desc.size
            record = await store.create_image(name, manifest_desc, {"origin": "test"})
            unpacked = await store.unpack(
                layer_descs, image.diff_ids, config_digest=config_desc.digest, lease=lease
            )
        after = client.statistics().rpc.calls
    assert rpc_delta(before, after) == {
        "Leases.Create": 1,
        "Content.Info": 4,  # one per blob: absent
        "Content.Write": 4,  # one stream per blob
        "Images.Create": 1,
        "Snapshots.List": 1,  # which chain IDs exist already
        "Snapshots.Prepare": 2,
        "Diff.Apply": 2,
        "Snapshots.Commit": 2,
        "Content.Update": 1,  # the config's gc.ref.snapshot label
        "Leases.Delete": 1,
    }
    chain = chain_ids(image.diff_ids)
    assert unpacked.chain_id == chain[-1]
    assert (unpacked.applied, unpacked.skipped) == (2, 0)
    assert record.name == name and record.target.digest == manifest_desc.digest
    assert record.labels == {"origin": "test"}

    # What ctr sees.
    assert ctr(containerd, ns, "images", "ls", "-q") == [name]
    assert sorted(ctr(containerd, ns, "content", "ls", "-q")) == sorted(
        d.digest for d, _ in image.blobs()
    )
    snapshots = ctr(containerd, ns, "snapshots", "--snapshotter", snapshotter, "ls")
    assert set(chain) <= set(snapshots)
    assert ctr(containerd, ns, "leases", "ls", "-q") == []
    config_info = await store.has(config_desc.digest)
    assert config_info is not None
    assert config_info.labels[f"containerd.io/gc.ref.snapshot.{snapshotter}"] == chain[-1]

    # A second unpack finds everything in place: one RPC.
    before = client.statistics().rpc.calls
    again = await store.unpack(layer_descs, image.diff_ids)
    assert (again.applied, again.skipped) == (0, 2)
    assert rpc_delta(before, client.statistics().rpc.calls) == {"Snapshots.List": 1}

    # A container on a snapshot of the image, run through the library.
    cid = unique_id("img")
    spec = build_spec(tmp_path, ["/bin/sh", "-c", "cat /hello.txt; ls /bin/busybox"])
    spec = msgspec.structs.replace(spec, root=Root(path="rootfs"))
    with trio.fail_after(30):
        lifecycle_before = client.statistics().rpc.calls
        async with store.open_lease() as lease:
            mounts = await store.prepare_container_snapshot(cid, unpacked.chain_id, lease=lease)
            container = await client.new_container(
                cid,
                spec,
                rootfs=mounts,
                snapshotter=snapshotter,
                snapshot_key=cid,
                image=name,
            )
        assert ctr(containerd, ns, "leases", "ls", "-q") == []
        task = await container.start()
        assert task.io is not None and task.io.stdout is not None
        output = await task.io.stdout.read_all()
        status = await task.wait()
        await task.delete()
        assert cid in ctr(containerd, ns, "snapshots", "--snapshotter", snapshotter, "ls")
        before = client.statistics().rpc.calls
        await container.delete()
        assert rpc_delta(before, client.statistics().rpc.calls) == {
            "Containers.Delete": 1,
            "Snapshots.Remove": 1,
        }
        assert cid not in ctr(containerd, ns, "snapshots", "--snapshotter", snapshotter, "ls")
        # The image-based lifecycle: the 5 RPCs of a plain one, plus Prepare and Remove
        # (and here a lease around the Prepare, which a caller may amortise).
        assert rpc_delta(lifecycle_before, client.statistics().rpc.calls) == {
            "Leases.Create": 1,
            "Snapshots.Prepare": 1,
            "Containers.Create": 1,
            "Leases.Delete": 1,
            "Tasks.Create": 1,
            "Tasks.Start": 1,
            "Tasks.Delete": 1,
            "Containers.Delete": 1,
            "Snapshots.Remove": 1,
        }
        # Removing it again is harmless.
        await store.remove_snapshot(cid)
    assert status.code == 0
    assert output == b"hello from layer 2\n/bin/busybox\n"

    # rmi: the record goes, and containerd's GC (run by the sync delete) takes the rest.
    before = client.statistics().rpc.calls
    await store.delete_image(name)
    assert rpc_delta(before, client.statistics().rpc.calls) == {"Images.Delete": 1}
    assert ctr(containerd, ns, "images", "ls", "-q") == []
    assert ctr(containerd, ns, "content", "ls", "-q") == []
    snapshots = ctr(containerd, ns, "snapshots", "--snapshotter", snapshotter, "ls")
    assert not set(chain) & set(snapshots)


async def test_present_blob_is_not_written_again(
    ns_client: Client, containerd: PrivateContainerd, image: Image
) -> None:
    store = ContentStore(ns_client._remote)
    desc, data = image.config
    with trio.fail_after(30):
        async with store.open_lease() as lease:
            first = await store.ingest(desc, chunks_of(data), labels={"a": "1"}, lease=lease)
            before = ns_client.statistics().rpc.calls

            async def never() -> AsyncIterator[bytes]:
                if desc.size >= 0:
                    raise AssertionError("a present blob's source must not be read")
                yield b""  # pragma: no cover

            second = await store.ingest(desc, never(), labels={"a": "1"}, lease=lease)
            assert rpc_delta(before, ns_client.statistics().rpc.calls) == {
                "Content.Info": 1,
                "Leases.AddResource": 1,  # held by our lease until something refers to it
            }
            # A missing label is added, nothing else.
            before = ns_client.statistics().rpc.calls
            third = await store.ingest(desc, never(), labels={"a": "1", "b": "2"}, lease=lease)
            assert rpc_delta(before, ns_client.statistics().rpc.calls) == {
                "Content.Info": 1,
                "Leases.AddResource": 1,
                "Content.Update": 1,
            }
            # Inside the lease: once it goes, nothing refers to the blob and GC takes it.
            info = await store.has(desc.digest)
            assert info is not None and info.labels == {"a": "1", "b": "2"}
    assert not first.present and second.present and third.present


async def test_interrupted_ingest_resumes_from_its_offset(
    ns_client: Client, containerd: PrivateContainerd
) -> None:
    store = ContentStore(ns_client._remote)
    data = os.urandom(3 * CHUNK_SIZE + 123)
    desc = descriptor(LAYER, data)
    ref = f"actors-{desc.digest}"
    with trio.fail_after(30):
        async with store.open_lease() as lease:
            with trio.CancelScope() as scope:

                async def half() -> AsyncIterator[bytes]:
                    yield data[: 3 * CHUNK_SIZE]
                    # Asked for more: two 1 MiB WRITEs are acknowledged by now (the third
                    # piece is held back to travel with the COMMIT).
                    yield data[3 * CHUNK_SIZE : 3 * CHUNK_SIZE + 10]
                    scope.cancel()
                    await trio.sleep_forever()

                await store.ingest(desc, half(), lease=lease)
            assert scope.cancelled_caught
            assert await store.ingest_status(ref) == 2 * CHUNK_SIZE
            assert ctr(containerd, ns_client.namespace, "content", "ls", "-q") == []

            offsets: list[int] = []

            def from_offset(offset: int) -> AsyncIterator[bytes]:
                offsets.append(offset)
                return chunks_of(data[offset:])

            before = ns_client.statistics().rpc.calls
            result = await store.ingest(desc, from_offset, lease=lease)
            assert rpc_delta(before, ns_client.statistics().rpc.calls) == {
                "Content.Info": 1,
                "Content.Write": 1,
            }
            assert ctr(containerd, ns_client.namespace, "content", "ls", "-q") == [desc.digest]
            assert await store.ingest_status(ref) is None
    assert offsets == [2 * CHUNK_SIZE]
    assert result.resumed_from == 2 * CHUNK_SIZE
    assert result.written == len(data) - 2 * CHUNK_SIZE
    # Resuming from an iterable that starts at 0: the held prefix is skipped.
    other = os.urandom(2 * CHUNK_SIZE + 7)
    other_desc = descriptor(LAYER, other)
    async with store.open_lease() as lease:
        with trio.CancelScope() as scope:

            async def cut() -> AsyncIterator[bytes]:
                yield other[: 2 * CHUNK_SIZE + 5]
                yield other[2 * CHUNK_SIZE + 5 : 2 * CHUNK_SIZE + 6]
                scope.cancel()
                await trio.sleep_forever()

            await store.ingest(other_desc, cut(), lease=lease)
        assert await store.ingest_status(f"actors-{other_desc.digest}") == CHUNK_SIZE
        resumed = await store.ingest(other_desc, chunks_of(other, 1000), lease=lease)
        assert resumed.resumed_from == CHUNK_SIZE
        info = await store.has(other_desc.digest)
        assert info is not None and info.size == len(other)


@pytest.mark.parametrize("size", [100, 2 * CHUNK_SIZE + 1])
async def test_wrong_digest_commits_nothing(
    ns_client: Client, containerd: PrivateContainerd, size: int
) -> None:
    store = ContentStore(ns_client._remote)
    data = os.urandom(size)
    lie = Descriptor(media_type=LAYER, digest=digest_of(b"something else"), size=size)
    ns = ns_client.namespace
    with trio.fail_after(30):
        async with store.open_lease() as lease:
            before = ns_client.statistics().rpc.calls
            with pytest.raises(DataLoss, match="does not match its digest"):
                await store.ingest(lie, chunks_of(data), lease=lease)
            delta = rpc_delta(before, ns_client.statistics().rpc.calls)
            assert delta == {"Content.Info": 1, "Content.Write": 1, "Content.Abort": 1}
            assert ctr(containerd, ns, "content", "active") == ["REF", "SIZE", "AGE"]
        assert ctr(containerd, ns, "leases", "ls", "-q") == []
    assert ctr(containerd, ns, "content", "ls", "-q") == []


@pytest.mark.parametrize("size", [100, 2 * CHUNK_SIZE + 1])
async def test_too_many_bytes_are_refused(
    ns_client: Client, containerd: PrivateContainerd, size: int
) -> None:
    store = ContentStore(ns_client._remote)
    data = os.urandom(size)
    desc = descriptor(LAYER, data)
    endless = data + b"x" * (3 * CHUNK_SIZE)
    ns = ns_client.namespace
    with trio.fail_after(30):
        async with store.open_lease() as lease:
            with pytest.raises(DataLoss, match="more than the descriptor"):
                await store.ingest(desc, chunks_of(endless), lease=lease)
            assert ctr(containerd, ns, "content", "active") == ["REF", "SIZE", "AGE"]
            # A short source is refused too (and, being maybe a cut download, kept to resume).
            with pytest.raises(DataLoss, match="ended after"):
                await store.ingest(desc, chunks_of(data[:-1]), lease=lease)
        assert ctr(containerd, ns, "leases", "ls", "-q") == []
        # What the lease held goes with it at the next collection.
        await store.collect_garbage()
    assert ctr(containerd, ns, "content", "active") == ["REF", "SIZE", "AGE"]
    assert ctr(containerd, ns, "content", "ls", "-q") == []


async def test_bad_input_sends_nothing(ns_client: Client, image: Image) -> None:
    store = ContentStore(ns_client._remote)
    before = ns_client.statistics().rpc.calls
    bad = Descriptor(media_type=LAYER, digest="sha256:nothex", size=1)
    with pytest.raises(InvalidArgument, match="invalid digest"):
        await store.ingest(bad, chunks_of(b"x"))
    with pytest.raises(InvalidArgument, match="invalid size"):
        await store.ingest(
            Descriptor(media_type=LAYER, digest=digest_of(b""), size=-1), chunks_of(b"")
        )
    layers = [d for d, _ in image.layers]
    with pytest.raises(InvalidArgument, match="3 layers but the config 2 diff IDs"):
        await store.unpack([*layers, layers[0]], image.diff_ids, snapshotter=NATIVE)
    with pytest.raises(InvalidArgument, match="invalid digest"):
        await store.unpack(layers, ["sha256:x", "sha256:y"], snapshotter=NATIVE)
    with pytest.raises(InvalidArgument, match="longer than 4096"):
        await store.ingest(image.config[0], chunks_of(b""), labels={"k": "v" * 5000})
    assert rpc_delta(before, ns_client.statistics().rpc.calls) == {}


async def test_wrong_diff_id_leaves_no_snapshot(
    ns_client: Client, containerd: PrivateContainerd, image: Image
) -> None:
    store = ContentStore(ns_client._remote)
    layer, data = image.layers[1]
    wrong = [digest_of(b"not this layer")]
    ns = ns_client.namespace
    with trio.fail_after(30):
        snapshotter = await store.snapshotter()
        async with store.open_lease() as lease:
            await store.ingest(layer, chunks_of(data), lease=lease)
            before = ns_client.statistics().rpc.calls
            with pytest.raises(DataLoss, match="the image config says"):
                await store.unpack([layer], wrong, lease=lease)
            assert rpc_delta(before, ns_client.statistics().rpc.calls) == {
                "Snapshots.List": 1,
                "Snapshots.Prepare": 1,
                "Diff.Apply": 1,
                "Snapshots.Remove": 1,
            }
            listed = ctr(containerd, ns, "snapshots", "--snapshotter", snapshotter, "ls")
            assert len(listed) == 3  # the header only
        assert ctr(containerd, ns, "leases", "ls", "-q") == []


async def test_two_ingests_of_one_blob_meet_on_its_ref(
    ns_client: Client, containerd: PrivateContainerd
) -> None:
    store = ContentStore(ns_client._remote)
    data = os.urandom(2 * CHUNK_SIZE + 1)
    desc = descriptor(LAYER, data)
    release = trio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[: CHUNK_SIZE + 1]
        await release.wait()
        yield data[CHUNK_SIZE + 1 :]

    results = {}
    with trio.fail_after(60):
        async with store.open_lease() as lease:

            async def ingest(name: str, source: AsyncIterator[bytes]) -> None:
                results[name] = await store.ingest(desc, source, lease=lease)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ingest, "first", slow())
                while await store.ingest_status(f"actors-{desc.digest}") is None:
                    await trio.sleep(0.01)
                nursery.start_soon(ingest, "second", chunks_of(data))
                # The second is refused while the first holds the ref ...
                while ns_client.statistics().rpc.failures.get("Content.Write", 0) == 0:
                    await trio.sleep(0.01)
                release.set()
            assert ctr(containerd, ns_client.namespace, "content", "ls", "-q") == [desc.digest]
    # ... and then finds the blob the first committed.
    assert not results["first"].present
    assert results["second"].present


async def test_read_returns_the_blob_within_its_limit(ns_client: Client, image: Image) -> None:
    store = ContentStore(ns_client._remote)
    desc, data = image.manifest
    with trio.fail_after(30):
        async with store.open_lease() as lease:
            await store.ingest(desc, chunks_of(data), lease=lease, check_present=False)
            before = ns_client.statistics().rpc.calls
            assert await store.read(desc.digest, limit=len(data)) == data
            assert rpc_delta(before, ns_client.statistics().rpc.calls) == {"Content.Read": 1}
            with pytest.raises(InvalidArgument, match="larger than"):
                await store.read(desc.digest, limit=len(data) - 1)


async def test_gc_keeps_what_an_index_references_until_the_image_goes(
    ns_client: Client, containerd: PrivateContainerd, image: Image
) -> None:
    store = ContentStore(ns_client._remote)
    manifest_desc, _ = image.manifest
    config_desc, _ = image.config
    layer_descs = [d for d, _ in image.layers]
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": manifest_desc.media_type,
                    "digest": manifest_desc.digest,
                    "size": manifest_desc.size,
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    ).encode()
    index_desc = descriptor(OCI_INDEX, index)
    labels = {
        index_desc.digest: index_gc_labels([manifest_desc]),
        manifest_desc.digest: manifest_gc_labels(config_desc, layer_descs),
        config_desc.digest: config_gc_labels(await store.snapshotter(), "sha256:" + "1" * 64),
    }
    ns = ns_client.namespace
    name = "registry.example:5000/ns/indexed:latest"
    with trio.fail_after(30):
        async with store.open_lease() as lease:
            for desc, data in [*image.blobs(), (index_desc, index)]:
                await store.ingest(
                    desc, chunks_of(data), labels=labels.get(desc.digest), lease=lease
                )
            await store.create_image(name, index_desc)
        # No lease any more: only the labels, from the image down, keep the blobs.
        await store.collect_garbage()
        assert sorted(ctr(containerd, ns, "content", "ls", "-q")) == sorted(
            [index_desc.digest, *(d.digest for d, _ in image.blobs())]
        )
        # Updating an existing name re-points it (Images.Update), same record.
        before = ns_client.statistics().rpc.calls
        record = await store.create_image(name, manifest_desc, {"k": "v"})
        assert rpc_delta(before, ns_client.statistics().rpc.calls) == {
            "Images.Create": 1,
            "Images.Update": 1,
        }
        assert record.target.digest == manifest_desc.digest
        assert (await store.get_image(name)).labels == {"k": "v"}
        assert [i.name for i in await store.list_images()] == [name]
        await store.collect_garbage()
        assert index_desc.digest not in ctr(containerd, ns, "content", "ls", "-q")
        await store.delete_image(name)
    assert ctr(containerd, ns, "content", "ls", "-q") == []


async def test_an_adopted_image_container_gets_its_mounts_from_its_snapshot(
    containerd: PrivateContainerd, io_dir: Path, image: Image, tmp_path: Path
) -> None:
    namespace = NAMESPACE + "-adopt"
    name = "docker.io/library/adopt:1"
    cid = unique_id("adopted")
    spec = build_spec(tmp_path, ["/bin/cat", "/hello.txt"])
    spec = msgspec.structs.replace(spec, root=Root(path="rootfs"))
    layer_descs = [d for d, _ in image.layers]
    with trio.fail_after(60):
        async with open_client(containerd.address, namespace, state_dir=str(io_dir)) as first:
            store = ContentStore(first._remote)
            snapshotter = await store.snapshotter()
            async with store.open_lease() as lease:
                for desc, data in image.blobs():
                    await store.ingest(desc, chunks_of(data), lease=lease)
                await store.create_image(name, image.manifest[0])
                unpacked = await store.unpack(
                    layer_descs, image.diff_ids, config_digest=image.config[0].digest, lease=lease
                )
                mounts = await store.prepare_container_snapshot(cid, unpacked.chain_id, lease=lease)
                await first.new_container(
                    cid, spec, rootfs=mounts, snapshotter=snapshotter, snapshot_key=cid
                )
        # Our own restart: the new client adopts the container, snapshot and all.
        async with open_client(containerd.address, namespace, state_dir=str(io_dir)) as second:
            container = await second.load_container(cid)
            before = second.statistics().rpc.calls
            task = await container.start()
            assert task.io is not None and task.io.stdout is not None
            output = await task.io.stdout.read_all()
            assert (await task.wait()).code == 0
            await task.delete()
            await container.delete()
            assert rpc_delta(before, second.statistics().rpc.calls) == {
                "Snapshots.Mounts": 1,
                "Tasks.Create": 1,
                "Tasks.Start": 1,
                "Tasks.Delete": 1,
                "Containers.Delete": 1,
                "Snapshots.Remove": 1,
            }
            store = ContentStore(second._remote)
            await store.delete_image(name)
    assert output == b"hello from layer 2\n"
    assert ctr(containerd, namespace, "content", "ls", "-q") == []
    listed = ctr(containerd, namespace, "snapshots", "--snapshotter", snapshotter, "ls")
    assert len(listed) == 3  # the header only


async def test_layer_by_layer_for_a_pipelined_pull(
    ns_client: Client, containerd: PrivateContainerd, image: Image
) -> None:
    store = ContentStore(ns_client._remote)
    ns = ns_client.namespace
    chain = chain_ids(image.diff_ids)
    with trio.fail_after(60):
        snapshotter = await store.snapshotter()
        async with store.open_lease() as lease:
            assert await store.unpacked_layers(image.diff_ids) == 0
            for index, (desc, data) in enumerate(image.layers):
                await store.ingest(desc, chunks_of(data), lease=lease)
                assert await store.apply_layer(desc, image.diff_ids, index, lease=lease)
            assert await store.unpacked_layers(image.diff_ids) == 2
            # Committed meanwhile by someone else: the work is dropped, nothing is left over.
            before = ns_client.statistics().rpc.calls
            desc = image.layers[1][0]
            assert not await store.apply_layer(desc, image.diff_ids, 1, lease=lease)
            assert rpc_delta(before, ns_client.statistics().rpc.calls) == {
                "Snapshots.Prepare": 1,
                "Diff.Apply": 1,
                "Snapshots.Commit": 1,
                "Snapshots.Remove": 1,
            }
            listed = ctr(containerd, ns, "snapshots", "--snapshotter", snapshotter, "ls")
            assert sorted(name for name in listed if name.startswith("sha256:")) == sorted(
                chain + chain[:1]  # each chain ID once as a key, the bottom once as a parent
            )
            assert not any(name.startswith("extract-") for name in listed)
            with pytest.raises(InvalidArgument, match="no layer 2"):
                await store.apply_layer(desc, image.diff_ids, 2, lease=lease)


async def test_present_blob_found_by_the_write_itself(
    ns_client: Client, containerd: PrivateContainerd, image: Image
) -> None:
    store = ContentStore(ns_client._remote)
    desc, data = image.config
    with trio.fail_after(30):
        async with store.open_lease() as lease:
            await store.ingest(desc, chunks_of(data), lease=lease)
            before = ns_client.statistics().rpc.calls
            again = await store.ingest(
                desc, chunks_of(data), labels={"x": "y"}, lease=lease, check_present=False
            )
            # Write answers AlreadyExists (and leases the blob); our labels follow.
            assert rpc_delta(before, ns_client.statistics().rpc.calls) == {
                "Content.Write": 1,
                "Content.Update": 1,
            }
            info = await store.has(desc.digest)
            assert info is not None and info.labels == {"x": "y"}
    assert again.present


async def test_a_blob_of_another_namespace_is_linked_without_its_bytes(
    ns_client: Client, containerd: PrivateContainerd, io_dir: Path
) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 3)
    desc = descriptor(LAYER, data)
    store = ContentStore(ns_client._remote)
    other_ns = NAMESPACE + "-other"
    with trio.fail_after(30):
        async with open_client(containerd.address, other_ns, state_dir=str(io_dir)) as other:
            other_store = ContentStore(other._remote)
            async with other_store.open_lease() as lease:
                await other_store.ingest(desc, chunks_of(data), lease=lease)
                # containerd shares content between namespaces: the ingest starts complete.
                async with store.open_lease() as ours:

                    def unread(offset: int) -> AsyncIterator[bytes]:
                        raise AssertionError("no byte needs to travel")

                    result = await store.ingest(desc, unread, lease=ours)
                    assert (result.present, result.resumed_from, result.written) == (
                        False,
                        desc.size,
                        0,
                    )
                    assert ctr(containerd, ns_client.namespace, "content", "ls", "-q") == [
                        desc.digest
                    ]
            await other_store.collect_garbage()
        assert ctr(containerd, other_ns, "content", "ls", "-q") == []


async def test_typed_calls_one_rpc_each(
    ns_client: Client, containerd: PrivateContainerd, image: Image
) -> None:
    store = ContentStore(ns_client._remote)
    services = store.services
    layer, data = image.layers[1]
    with trio.fail_after(30):
        snapshotter = await store.snapshotter()
        async with store.open_lease() as lease:
            await store.ingest(layer, chunks_of(data), lease=lease)
            await store.apply_layer(layer, image.diff_ids[1:], 0, lease=lease)
            chain = image.diff_ids[1]
            before = ns_client.statistics().rpc.calls
            assert [i.digest for i in await services.content_list()] == [layer.digest]
            assert await services.content_list_statuses() == []
            info = await services.snapshots_stat(snapshotter, chain)
            assert info.kind == snapshots_pb2.COMMITTED and info.parent == ""
            view = await services.snapshots_view(snapshotter, "a-view", chain, lease=lease)
            assert view and await services.snapshots_mounts(snapshotter, "a-view")
            assert {i.name for i in await services.snapshots_list(snapshotter)} == {
                chain,
                "a-view",
            }
            await services.snapshots_remove(snapshotter, "a-view")
            leases = await store.leases()
            assert [entry.id for entry in leases] == [lease]
            assert "containerd.io/gc.expire" in leases[0].labels
            await services.content_delete(layer.digest)
            assert await store.has(layer.digest) is None
            assert rpc_delta(before, ns_client.statistics().rpc.calls) == {
                "Content.List": 1,
                "Content.ListStatuses": 1,
                "Snapshots.Stat": 1,
                "Snapshots.View": 1,
                "Snapshots.Mounts": 1,
                "Snapshots.List": 1,
                "Snapshots.Remove": 1,
                "Leases.List": 1,
                "Content.Delete": 1,
                "Content.Info": 1,
            }


async def test_a_failing_source_keeps_what_was_written_for_a_resume(
    ns_client: Client, containerd: PrivateContainerd
) -> None:
    store = ContentStore(ns_client._remote)
    data = os.urandom(3 * CHUNK_SIZE)
    desc = descriptor(LAYER, data)

    class NetworkDown(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield data[: 2 * CHUNK_SIZE + 1]
        raise NetworkDown

    with trio.fail_after(30):
        async with store.open_lease() as lease:
            # The source's own error comes through unchanged (the caller's to classify).
            with pytest.raises(NetworkDown):
                await store.ingest(desc, broken(), lease=lease)
            assert await store.ingest_status(f"actors-{desc.digest}") == CHUNK_SIZE
            resumed = await store.ingest(desc, chunks_of(data), lease=lease)
            assert resumed.resumed_from == CHUNK_SIZE
            assert await store.has(desc.digest) is not None
