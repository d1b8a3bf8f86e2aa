"""The public images API against the real containerd and a real registry: pull, run, rmi.

Each test uses a namespace of its own and checks with ``ctr`` (an independent client).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import trio

from actors import Client, Image, LayerProgress, image_spec, open_client
from actors.containerd._embedded import PrivateContainerd
from actors.errors import DataLoss, InvalidArgument, NotFound, Unavailable
from actors.images._platform import host_platform
from tests.imagebuilder import BuiltImage, build_image, layout_tar, skopeo_push
from tests.registry_fixture import LocalRegistry, require_tools

from ...conftest import unique_id
from .ctrtools import ctr, ctr_lines, snapshots

pytestmark = pytest.mark.integration

HOST = str(host_platform())
OTHER = "linux/arm64" if HOST != "linux/arm64" else "linux/amd64"


@pytest.fixture(scope="session")
def pushed(
    registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, BuiltImage]:
    require_tools("skopeo")
    base = tmp_path_factory.mktemp("api-images")
    image = build_image(base / "rootfs", platforms=(HOST, OTHER), layout=base / "layout", tag="v1")
    reference = f"{registry.host}/api/busybox:v1"
    skopeo_push(base / "layout", "v1", reference)
    return reference, image


async def run_output(client: Client, image: Image | str, **overrides: object) -> tuple[int, bytes]:
    container = await client.new_container(unique_id("run"), image=image, **overrides)  # type: ignore[arg-type]
    with trio.fail_after(30):
        task = await container.start()
        assert task.io is not None and task.io.stdout is not None
        out = await task.io.stdout.read_all()
        status = await task.wait()
    await task.delete()
    await container.delete()
    return status.code, out


async def test_pull_run_and_rmi_leave_nothing(
    ns_client: Client, containerd: PrivateContainerd, pushed: tuple[str, BuiltImage]
) -> None:
    client = ns_client
    reference, built = pushed
    events: list[LayerProgress] = []
    with trio.fail_after(120):
        image = await client.images.pull(reference, progress=events.append)
    assert image.name == reference
    assert image.digest == built.target.digest
    assert image.id == built.manifests[HOST].digest or image.config.architecture
    assert [e.state for e in events if e.index == 0][-1] == "done"
    assert {e.state for e in events} >= {"waiting", "downloading", "extracting", "done"}
    # ctr sees it (and its snapshots); no lease outlives the pull.
    assert reference in ctr(containerd, client.namespace, "images", "ls", "-q")
    assert ctr_lines(containerd, client.namespace, "leases", "ls") == []
    # Default command: Entrypoint sh -c + Cmd "cat /etc/motd"; the top layer overrides it.
    code, out = await run_output(client, image)
    assert (code, out) == (0, b"layer 1\n")
    # Whiteout, opaque directory, WorkingDir and Env honoured.
    code, out = await run_output(
        client,
        image,
        args=["pwd; echo $GREETING; ls /data; ls /opq; ls /opq/sub 2>&1 || echo nosub"],
    )
    assert code == 0
    lines = out.decode().split()
    assert lines[:2] == ["/data", "hello"]
    assert "removed" not in lines and "kept" in lines
    assert "new" in lines and "old" not in lines and "nosub" in lines
    # An explicit entrypoint drops the image's Cmd.
    code, out = await run_output(client, image, entrypoint=["/bin/echo"], args=["hi"])
    assert (code, out) == (0, b"hi\n")
    # A second pull downloads nothing and applies nothing.
    again: list[LayerProgress] = []
    await client.images.pull(reference, progress=again.append)
    assert not any(e.state in ("downloading", "extracting") for e in again)
    # rmi + GC: nothing left.
    await client.images.remove(reference)
    with trio.fail_after(30):
        await client.images.store.collect_garbage()
    for kind in ("images", "content", "leases"):
        assert ctr_lines(containerd, client.namespace, kind, "ls") == [], kind
    assert snapshots(containerd, client) == []


async def test_lifecycle_from_a_pulled_image_costs_seven_rpcs(
    ns_client: Client, containerd: PrivateContainerd, pushed: tuple[str, BuiltImage]
) -> None:
    client = ns_client
    reference, _ = pushed
    with trio.fail_after(120):
        image = await client.images.pull(reference)
    await run_output(client, image, args=["true"])  # warm: the snapshotter probe
    before = dict(client.statistics().rpc.calls)
    container = await client.new_container(unique_id("seven"), image=image, args=["true"])
    with trio.fail_after(30):
        task = await container.start()
        assert (await task.wait()).code == 0
    await task.delete()
    await container.delete()
    after = client.statistics().rpc.calls
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert delta == {
        "Containers.Create": 1,
        "Snapshots.Prepare": 1,
        "Tasks.Create": 1,
        "Tasks.Start": 1,
        "Tasks.Delete": 1,
        "Snapshots.Remove": 1,
        "Containers.Delete": 1,
    }
    # By name: the same 7. The pull put the name in the client's name cache (kept true by
    # containerd's image events), the documents are cached by digest.
    await settled(client, reference)
    before = dict(client.statistics().rpc.calls)
    code, _ = await run_output(client, reference, args=["true"])
    after = client.statistics().rpc.calls
    assert code == 0
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert "Images.Get" not in delta and sum(delta.values()) == 7, delta
    assert ctr_lines(containerd, client.namespace, "containers", "ls") == []
    assert len(snapshots(containerd, client)) == len(image.layers)  # the image's chain only


async def settled(client: Client, name: str) -> None:
    """Wait (deadline) until the echo of our own write of ``name`` came back as an event,
    so the name cache serves it: until then a run resolves it with an Images.Get."""
    names = client.images.store.names
    with trio.fail_after(10):
        await names.wait_settled(name)
    await client.images.get(name)  # fills the cache if an event emptied it
    assert names.cached(name)


async def motd(client: Client, name: str) -> bytes:
    code, out = await run_output(
        client, name, entrypoint=["/bin/sh"], args=["-c", "cat /etc/motd 2>/dev/null || echo none"]
    )
    assert code == 0
    return out


async def test_a_name_changed_behind_our_back_is_seen_by_the_next_run(
    ns_client: Client, containerd: PrivateContainerd, pushed: tuple[str, BuiltImage]
) -> None:
    client = ns_client
    reference, _ = pushed
    with trio.fail_after(120):
        pulled = await client.images.pull(reference)
    other = await client.images.ensure_busybox()  # a second image: no /etc/motd
    tag = f"docker.io/library/{unique_id('tag').replace('_', '-')}:latest"
    names = client.images.store.names
    ctr(containerd, client.namespace, "images", "tag", reference, tag)
    assert await motd(client, tag) == b"layer 1\n"
    await settled(client, tag)
    before = client.statistics().rpc.calls["Images.Get"]
    assert await motd(client, tag) == b"layer 1\n"
    assert client.statistics().rpc.calls["Images.Get"] == before, "served from the cache"
    # ctr re-points the name (Images.Delete + Create): the event drops our cached record.
    ctr(containerd, client.namespace, "images", "tag", "--force", other.name, tag)
    with trio.fail_after(10):
        await names.wait_forgotten(tag)
    assert await motd(client, tag) == b"none\n"
    # Another client's Images.Update (the store of a second connection) is seen too.
    await settled(client, tag)
    async with open_client(
        containerd.address, client.namespace, state_dir=client.state_dir
    ) as second:
        await second.images.store.create_image(tag, pulled.target)
    with trio.fail_after(10):
        await names.wait_forgotten(tag)
    assert await motd(client, tag) == b"layer 1\n"
    # Removed behind our back: the next run says so, and leaves nothing.
    await settled(client, tag)
    ctr(containerd, client.namespace, "images", "rm", tag)
    with trio.fail_after(10):
        await names.wait_forgotten(tag)
    with pytest.raises(NotFound, match="no such image"):
        await client.new_container(unique_id("gone"), image=tag, args=["true"])
    assert ctr_lines(containerd, client.namespace, "containers", "ls") == []


async def test_restore_adopts_image_containers(
    containerd: PrivateContainerd, io_dir: Path, pushed: tuple[str, BuiltImage]
) -> None:
    namespace = unique_id("imgr").replace("_", "-")
    reference, _ = pushed
    cid = unique_id("adopt")
    async with open_client(containerd.address, namespace, state_dir=str(io_dir)) as client:
        with trio.fail_after(120):
            image = await client.images.pull(reference)
        container = await client.new_container(cid, image=image, args=["sleep 60"])
        await container.start()
    async with open_client(containerd.address, namespace, state_dir=str(io_dir)) as client:
        container = await client.load_container(cid)
        task = await container.task()
        with trio.fail_after(30):
            await task.kill(9)
            await task.wait()
        await task.delete()
        # Restart it on its own snapshot: the mounts come from containerd (Snapshots.Mounts).
        task = await container.start()
        with trio.fail_after(30):
            await task.kill(9)
            await task.wait()
        await task.delete()
        await container.delete()
        assert cid not in snapshots(containerd, client)


async def test_each_container_gets_its_own_writable_root(
    ns_client: Client, pushed: tuple[str, BuiltImage]
) -> None:
    client = ns_client
    reference, _ = pushed
    with trio.fail_after(120):
        image = await client.images.pull(reference)
    code, _ = await run_output(
        client, image, args=["rm -f /bin/cat && ln -s /etc /data/link && echo x > /etc/motd"]
    )
    assert code == 0
    code, out = await run_output(client, image, args=["cat /etc/motd; ls /data"])
    assert code == 0
    assert out.split() == [b"layer", b"1", b"kept"]


async def test_bad_references_leave_nothing(
    ns_client: Client, containerd: PrivateContainerd, registry: LocalRegistry
) -> None:
    client = ns_client
    with trio.fail_after(60):
        with pytest.raises(NotFound):
            await client.images.pull(f"{registry.host}/api/nothing:v1")
        with pytest.raises(Unavailable):
            await client.images.pull("127.0.0.1:1/api/nothing:v1")
        with pytest.raises(NotFound):
            await client.images.get("never-pulled")
        with pytest.raises(NotFound):
            await client.new_container(unique_id("none"), image="never-pulled")
    for kind in ("images", "leases", "containers"):
        assert ctr_lines(containerd, client.namespace, kind, "ls") == [], kind


async def test_other_platform_image_is_refused(
    ns_client: Client, containerd: PrivateContainerd, registry: LocalRegistry, tmp_path: Path
) -> None:
    require_tools("skopeo")
    foreign = "linux/s390x"
    build_image(tmp_path / "rootfs", platforms=(foreign,), layout=tmp_path / "layout", tag="v1")
    reference = f"{registry.host}/api/foreign:v1"
    skopeo_push(tmp_path / "layout", "v1", reference)
    with trio.fail_after(60), pytest.raises(NotFound, match="platform"):
        await ns_client.images.pull(reference)
    assert ctr_lines(containerd, ns_client.namespace, "images", "ls") == []
    assert ctr_lines(containerd, ns_client.namespace, "leases", "ls") == []


async def test_import_export_round_trip(
    ns_client: Client, containerd: PrivateContainerd, tmp_path: Path
) -> None:
    client = ns_client
    build_image(tmp_path / "rootfs", platforms=(HOST,), layout=tmp_path / "layout", tag="v1")
    archive = tmp_path / "image.tar"
    archive.write_bytes(layout_tar(tmp_path / "layout"))
    with trio.fail_after(120):
        imported = await client.images.import_archive(archive, base_name="local/app")
    assert [i.name for i in imported] == ["docker.io/local/app:v1"]
    code, out = await run_output(client, imported[0])
    assert (code, out) == (0, b"layer 1\n")
    exported = tmp_path / "out.tar"
    await client.images.export(["local/app:v1"], exported)
    await client.images.remove("local/app:v1")
    again = await client.images.import_archive(exported)
    assert [i.name for i in again] == ["docker.io/local/app:v1"]
    assert again[0].id == imported[0].id
    # ctr can import our export too.
    ctr(containerd, client.namespace, "images", "import", "--no-unpack", str(exported))
    assert "docker.io/local/app:v1" in ctr(containerd, client.namespace, "images", "ls", "-q")
    with pytest.raises(InvalidArgument, match="not an image archive"):
        await client.images.import_archive(io.BytesIO(b"not a tar" * 100))
    assert ctr_lines(containerd, client.namespace, "leases", "ls") == []


async def test_image_spec_keeps_explicit_options(ns_client: Client, tmp_path: Path) -> None:
    client = ns_client
    build_image(tmp_path / "rootfs", platforms=(HOST,), layout=tmp_path / "layout", tag="v1")
    archive = tmp_path / "image.tar"
    archive.write_bytes(layout_tar(tmp_path / "layout"))
    (image,) = await client.images.import_archive(archive, base_name="local/spec")
    spec = image_spec(image, args=["id -u; echo $X"], env=["X=1"], user="1000", hardened=True)
    assert spec.root is not None and spec.root.path == "rootfs"
    container = await client.new_container(unique_id("spec"), spec, image=image)
    with trio.fail_after(30):
        task = await container.start()
        assert task.io is not None and task.io.stdout is not None
        out = await task.io.stdout.read_all()
        await task.wait()
    await task.delete()
    await container.delete()
    assert out.split() == [b"1000", b"1"]


async def assert_nothing_left(client: Client, containerd: PrivateContainerd) -> None:
    """No image, no lease; after containerd's GC no blob and no snapshot either."""
    namespace = client.namespace
    assert ctr_lines(containerd, namespace, "images", "ls") == []
    assert ctr_lines(containerd, namespace, "leases", "ls") == []
    with trio.fail_after(30):
        await client.images.store.collect_garbage()
    assert ctr_lines(containerd, namespace, "content", "ls") == []
    assert snapshots(containerd, client) == []


async def test_corrupt_layer_fails_the_pull_and_leaves_nothing(
    ns_client: Client, containerd: PrivateContainerd, registry: LocalRegistry, tmp_path: Path
) -> None:
    require_tools("skopeo")
    built = build_image(
        tmp_path / "rootfs",
        platforms=(HOST,),
        extra={"unique": os.urandom(4096)},
        layout=tmp_path / "layout",
        tag="v1",
    )
    reference = f"{registry.host}/api/corrupt-{os.getpid()}:v1"
    skopeo_push(tmp_path / "layout", "v1", reference)
    path = registry.blob_path(built.layers[-1].digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with trio.fail_after(120), pytest.raises(DataLoss):
        await ns_client.images.pull(reference)
    await assert_nothing_left(ns_client, containerd)


async def test_endless_layer_stream_is_cut_and_leaves_nothing(
    ns_client: Client, containerd: PrivateContainerd
) -> None:
    from tests.httpstub import Reply, http_stub
    from tests.unit.images.test_registry_client import registry_handler

    async def endless(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        while True:
            await stream.send_all(b"x" * 65536)

    with trio.fail_after(60):
        async with http_stub(registry_handler(layer=Reply(200, {}, endless))) as server:
            with pytest.raises(DataLoss):
                await ns_client.images.pull(f"{server.host}/ns/app:v1")
    await assert_nothing_left(ns_client, containerd)


async def test_interop_with_ctr_both_ways(
    ns_client: Client, containerd: PrivateContainerd, pushed: tuple[str, BuiltImage]
) -> None:
    client = ns_client
    reference, _ = pushed
    namespace = client.namespace
    with trio.fail_after(120):
        await client.images.pull(reference)
    # ctr runs what we pulled (it finds our unpacked snapshots by chain ID).
    cid = unique_id("ctr")
    out = await trio.to_thread.run_sync(
        lambda: ctr(containerd, namespace, "run", "--rm", reference, cid, "echo", "hi")
    )
    assert out == "hi\n"
    # We run what ctr pulled.
    await client.images.remove(reference)
    await trio.to_thread.run_sync(
        lambda: ctr(containerd, namespace, "images", "pull", "--plain-http", reference)
    )
    image = await client.images.get(reference)
    code, out_bytes = await run_output(client, image, args=["cat /etc/motd; ls /data"])
    assert (code, out_bytes.split()) == (0, [b"layer", b"1", b"kept"])


async def test_pull_progress_as_an_async_iterator(
    ns_client: Client, containerd: PrivateContainerd, pushed: tuple[str, BuiltImage]
) -> None:
    reference, built = pushed
    seen: list[LayerProgress] = []
    with trio.fail_after(120):
        async with ns_client.images.pulling(reference) as pull:
            async for layer in pull:
                seen.append(layer)
    assert pull.image is not None and pull.image.digest == built.target.digest
    for index in range(len(built.layers)):
        states = [p.state for p in seen if p.index == index]
        assert states[0] == "waiting" and states[-1] == "done", states
    with trio.fail_after(60), pytest.raises(NotFound):
        async with ns_client.images.pulling(reference.rsplit(":", 1)[0] + ":nope") as pull:
            async for _ in pull:
                pass
    assert ctr_lines(containerd, ns_client.namespace, "leases", "ls") == []
