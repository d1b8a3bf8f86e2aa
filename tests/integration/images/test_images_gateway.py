"""Images through the control plane and the CLI, with serve's own policy (no shared rootfs).

Also the attack of issue 10 item 2: a container that replaces /bin/busybox or points /etc at
a host path changes neither a second container nor the next serve start.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import trio

from actors import Client, open_client
from actors.containerd._embedded import PrivateContainerd
from actors.control._cli import build_parser, serve_policy
from actors.control.gateway import Gateway, GatewayConfig
from actors.control.gateway_client import GatewayClient, connect_gateway
from actors.errors import NotFound, Unauthenticated
from actors.images._auth import Credentials
from actors.images._builtin import BUSYBOX_IMAGE, ensure_busybox_image
from actors.images._platform import host_platform
from tests.imagebuilder import build_image, skopeo_push
from tests.registry_fixture import LocalRegistry, require_tools

from ...conftest import unique_id

pytestmark = pytest.mark.integration

HOST = str(host_platform())


@dataclass
class Served:
    client: Client
    url: str
    token: str


@asynccontextmanager
async def serve_like(
    containerd: PrivateContainerd, namespace: str, io_dir: Path
) -> AsyncIterator[Served]:
    """serve's start path: its policy from its flags, busybox ensured, the gateway."""
    args = build_parser().parse_args(["serve"])
    policy = serve_policy(args)
    assert policy.default_rootfs is None
    token = secrets.token_urlsafe(32)
    async with (
        open_client(containerd.address, namespace, state_dir=str(io_dir)) as client,
        trio.open_nursery() as nursery,
    ):
        await ensure_busybox_image(client.images)
        gateway = Gateway(client, GatewayConfig(token=token, policy=policy, port=0))
        await nursery.start(gateway.serve)
        yield Served(client, f"ws://127.0.0.1:{gateway.port}", token)
        nursery.cancel_scope.cancel()


async def run(gw: GatewayClient, *, image: str | None = None, args: list[str]) -> tuple[int, str]:
    cid = unique_id("gwi")
    params: dict[str, Any] = {"id": cid, "args": args}
    if image:
        params["image"] = image
    await gw.call("container.create", params)
    await gw.call("task.start", {"id": cid})
    async with gw.attach(cid, replay=True) as stdio:
        out = b""
        with trio.fail_after(30):
            async for stream, data in stdio.output():
                if stream == 1:
                    out += data
    status = await gw.call("task.wait", {"id": cid})
    await gw.call("task.delete", {"id": cid})
    await gw.call("container.delete", {"id": cid})
    return int(status["code"]), out.decode()


def ctr(daemon: PrivateContainerd, namespace: str, *args: str) -> str:
    return subprocess.run(
        ["ctr", "-a", daemon.address, "-n", namespace, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


async def test_busybox_containers_do_not_share_a_writable_root(
    containerd: PrivateContainerd, io_dir: Path, tmp_path: Path
) -> None:
    namespace = unique_id("bbx").replace("_", "-")
    host_dir = tmp_path / "host-etc"
    host_dir.mkdir()
    (host_dir / "passwd").write_text("host passwd\n")
    os.chmod(host_dir, 0o755)
    for attempt in range(2):  # serve's start path twice
        async with (
            serve_like(containerd, namespace, io_dir) as served,
            connect_gateway(served.url, served.token) as gw,
        ):
            image = await gw.call("image.inspect", {"name": "busybox"})
            assert image["name"] == BUSYBOX_IMAGE
            if attempt == 0:
                first_id = image["id"]
                code, _ = await run(
                    gw,
                    args=[
                        "sh",
                        "-c",
                        f"rm -rf /etc /tmp && ln -s {host_dir} /etc && ln -s {host_dir} /tmp"
                        " && rm /bin/busybox && echo '#!/bin/sh' > /bin/busybox"
                        " && echo echo pwned >> /bin/busybox && chmod 755 /bin/busybox",
                    ],
                )
                assert code == 0
            else:
                assert image["id"] == first_id
            code, out = await run(gw, args=["sh", "-c", "cat /etc/passwd; ls -ld /tmp"])
            assert code == 0
            assert out.startswith("root:x:0:0")
            assert "pwned" not in out
    assert (host_dir / "passwd").read_text() == "host passwd\n"
    assert os.stat(host_dir).st_mode & 0o7777 == 0o755


async def test_builtin_busybox_never_replaces_an_existing_image(
    containerd: PrivateContainerd, io_dir: Path, tmp_path: Path
) -> None:
    namespace = unique_id("bbr").replace("_", "-")
    async with open_client(containerd.address, namespace, state_dir=str(io_dir)) as client:
        build_image(tmp_path / "rootfs", platforms=(HOST,), layout=tmp_path / "layout", tag="v1")
        from tests.imagebuilder import layout_tar

        archive = tmp_path / "a.tar"
        archive.write_bytes(layout_tar(tmp_path / "layout"))
        (mine,) = await client.images.import_archive(archive, base_name="busybox")
        assert mine.name == "docker.io/library/busybox:v1"
        await client.images.store.create_image(BUSYBOX_IMAGE, mine.target)
        kept = await ensure_busybox_image(client.images)
        assert kept.id == mine.id


@pytest.fixture(scope="module")
def pushed(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    require_tools("skopeo")
    base = tmp_path_factory.mktemp("gw-images")
    build_image(base / "rootfs", platforms=(HOST,), layout=base / "layout", tag="v1")
    reference = f"{registry.host}/gw/app:v1"
    skopeo_push(base / "layout", "v1", reference)
    return reference


async def cli(served: Served, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "CONTAINERD_ACTORS_TOKEN": served.token,
        "CONTAINERD_ACTORS_URL": served.url,
        "DOCKER_CONFIG": "/nonexistent",
    }
    return await trio.run_process(
        [sys.executable, "-m", "supervisor", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


async def test_pull_run_images_rmi_save_load_through_the_cli(
    containerd: PrivateContainerd, io_dir: Path, pushed: str, tmp_path: Path
) -> None:
    namespace = unique_id("cli").replace("_", "-")
    async with serve_like(containerd, namespace, io_dir) as served:
        with trio.fail_after(180):
            # run of an absent image pulls it first (plain progress lines: no terminal).
            done = await cli(served, "run", "--rm", pushed)
            assert done.returncode == 0, done.stderr
            assert done.stdout == b"layer 1\n"
            assert b"Pull complete" in done.stderr
            done = await cli(served, "run", "--rm", "--entrypoint", "/bin/echo", pushed, "hi")
            assert (done.returncode, done.stdout) == (0, b"hi\n")
            listed = await cli(served, "images", "--format", "json")
            rows = [msgspec.json.decode(line) for line in listed.stdout.splitlines()]
            assert {r["name"] for r in rows} == {pushed, BUSYBOX_IMAGE}
            table = await cli(served, "images")
            assert table.stdout.splitlines()[0].split()[:4] == [
                b"REPOSITORY",
                b"TAG",
                b"IMAGE",
                b"ID",
            ]
            archive = tmp_path / "saved.tar"
            saved = await cli(served, "save", "-o", str(archive), pushed)
            assert saved.returncode == 0, saved.stderr
            assert archive.stat().st_size > 1000
            removed = await cli(served, "rmi", pushed)
            assert removed.returncode == 0 and pushed.encode() in removed.stdout
            loaded = await cli(served, "load", "-i", str(archive))
            assert loaded.returncode == 0, loaded.stderr
            assert f"Loaded image: {pushed}".encode() in loaded.stdout
            not_an_image = tmp_path / "junk.tar"
            not_an_image.write_bytes(b"junk" * 1000)
            bad = await cli(served, "load", "-i", str(not_an_image))
            assert bad.returncode != 0 and b"not an image archive" in bad.stderr
            pulled = await cli(served, "pull", pushed)
            assert pulled.returncode == 0 and b"Already exists" in pulled.stderr
            missing = await cli(served, "run", "--rm", f"{pushed.split('/')[0]}/gw/none:v1")
            assert missing.returncode == 125
        assert ctr(containerd, namespace, "leases", "ls", "-q").split() == []
        assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("actors-load-*/archive.tar"))


async def test_pull_progress_notifications(
    containerd: PrivateContainerd, io_dir: Path, pushed: str
) -> None:
    namespace = unique_id("prg").replace("_", "-")
    async with (
        serve_like(containerd, namespace, io_dir) as served,
        connect_gateway(served.url, served.token) as gw,
    ):
        seen: list[dict[str, Any]] = []
        with trio.fail_after(120):
            image = await gw.call_with_progress("image.pull", {"reference": pushed}, seen.append)
        assert image["name"] == pushed
        assert {s["state"] for s in seen} >= {"waiting", "downloading", "done"}
        with pytest.raises(NotFound):
            await gw.call("image.inspect", {"name": "nothing-here"})


async def test_basic_auth_and_wrong_credentials(
    auth_registry: LocalRegistry, tmp_path: Path, containerd: PrivateContainerd, io_dir: Path
) -> None:
    require_tools("skopeo")
    build_image(tmp_path / "rootfs", platforms=(HOST,), layout=tmp_path / "layout", tag="v1")
    reference = f"{auth_registry.host}/private/app:v1"
    skopeo_push(tmp_path / "layout", "v1", reference, credentials=auth_registry.credentials)
    assert auth_registry.username is not None and auth_registry.password is not None
    namespace = unique_id("auth").replace("_", "-")
    async with open_client(containerd.address, namespace, state_dir=str(io_dir)) as client:
        with trio.fail_after(120):
            wrong = Credentials(auth_registry.username, "wrong-" + auth_registry.password)
            with pytest.raises(Unauthenticated) as info:
                await client.images.pull(reference, credentials=wrong)
            assert auth_registry.password not in str(info.value)
            assert await client.images.store.leases() == []
            good = Credentials(auth_registry.username, auth_registry.password)
            image = await client.images.pull(reference, credentials=good)
        container = await client.new_container(unique_id("auth"), image=image, args=["echo ok"])
        with trio.fail_after(30):
            task = await container.start()
            assert task.io is not None and task.io.stdout is not None
            assert await task.io.stdout.read_all() == b"ok\n"
            await task.wait()
        await task.delete()
        await container.delete()


async def test_a_run_by_image_name_costs_seven_rpcs_through_the_gateway(
    containerd: PrivateContainerd, io_dir: Path
) -> None:
    namespace = unique_id("gw7").replace("_", "-")
    async with (
        serve_like(containerd, namespace, io_dir) as served,
        connect_gateway(served.url, served.token) as gw,
    ):
        names = served.client.images.store.names
        assert (await run(gw, image="busybox", args=["true"]))[0] == 0  # warm: probe, cache
        with trio.fail_after(10):
            await names.wait_settled(BUSYBOX_IMAGE)
        assert names.cached(BUSYBOX_IMAGE)
        cid = unique_id("gw7")
        before = dict(served.client.statistics().rpc.calls)
        await gw.call("container.create", {"id": cid, "image": "busybox", "args": ["true"]})
        await gw.call("task.start", {"id": cid})
        with trio.fail_after(30):
            status = await gw.call("task.wait", {"id": cid})
        await gw.call("task.delete", {"id": cid})
        await gw.call("container.delete", {"id": cid})
        after = served.client.statistics().rpc.calls
        assert status["code"] == 0
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


TRAP = (
    "trap 'echo got-usr1; exit 3' USR1; trap 'echo got-usr2; exit 4' USR2; "
    "echo ready; while true; do sleep 0.1; done"
)


async def started(gw: GatewayClient, cid: str, **params: Any) -> None:
    """Create and start ``cid`` on the stop-signal image; return once its traps are set."""
    await gw.call("container.create", {"id": cid, **params})
    await gw.call("task.start", {"id": cid})
    async with (
        gw.attach(cid, replay=True) as stdio,
        aclosing(cast(AsyncGenerator[tuple[int, bytes], None], stdio.output())) as output,
    ):
        with trio.fail_after(30):
            async for stream, data in output:
                if stream == 1 and b"ready" in data:
                    break


async def test_stop_sends_the_image_stop_signal_unless_overridden(
    containerd: PrivateContainerd, io_dir: Path, tmp_path: Path
) -> None:
    import io

    from tests.imagebuilder import layout_tar

    namespace = unique_id("stopsig").replace("_", "-")
    layout = tmp_path / "layout"
    build_image(
        tmp_path / "rootfs",
        platforms=(HOST,),
        layout=layout,
        tag="usr1",
        stop_signal="SIGUSR1",
        cmd=[TRAP],
    )
    image_cid, override_cid = unique_id("usr1"), unique_id("usr2")
    async with serve_like(containerd, namespace, io_dir) as served:
        (image,) = await served.client.images.import_archive(
            io.BytesIO(layout_tar(layout)), base_name="test/stopsig"
        )
        async with connect_gateway(served.url, served.token) as gw:
            await started(gw, image_cid, image=image.name)
            await started(gw, override_cid, image=image.name, stop_signal="SIGUSR2")
            assert (await gw.call("container.inspect", {"id": image_cid}))["stop_signal"] == 10
            with trio.fail_after(30):
                status = await gw.call("container.stop", {"id": override_cid, "timeout": 20})
            assert status["code"] == 4, "--stop-signal wins over the image's"
    # A new serve (new gateway and client) still knows the image's signal: it is a label.
    async with (
        serve_like(containerd, namespace, io_dir) as served,
        connect_gateway(served.url, served.token) as gw,
    ):
        with trio.fail_after(30):
            status = await gw.call("container.stop", {"id": image_cid, "timeout": 20})
        assert status["code"] == 3, "SIGUSR1 first (SIGTERM is ignored by a pid 1 sh: 137)"
        for cid in (image_cid, override_cid):
            await gw.call("task.delete", {"id": cid})
            await gw.call("container.delete", {"id": cid})


async def test_image_volumes_stay_in_each_containers_own_snapshot_and_inspect_shows_them(
    containerd: PrivateContainerd, io_dir: Path, tmp_path: Path
) -> None:
    import io

    from tests.imagebuilder import layout_tar

    namespace = unique_id("vols").replace("_", "-")
    layout = tmp_path / "layout"
    build_image(tmp_path / "rootfs", platforms=(HOST,), layout=layout, tag="vol", volumes=["/vol"])
    async with serve_like(containerd, namespace, io_dir) as served:
        (image,) = await served.client.images.import_archive(
            io.BytesIO(layout_tar(layout)), base_name="test/vols"
        )
        async with connect_gateway(served.url, served.token) as gw:
            assert (await gw.call("image.inspect", {"name": image.name}))["config"]["volumes"] == [
                "/vol"
            ]
            cid = unique_id("vol")
            await gw.call("container.create", {"id": cid, "image": image.name, "args": ["true"]})
            assert (await gw.call("container.inspect", {"id": cid}))["volumes"] == ["/vol"]
            await gw.call("container.delete", {"id": cid})
            # Written in one container, absent in the next: no shared volume exists.
            code, _ = await run(gw, image=image.name, args=["mkdir -p /vol && echo x > /vol/f"])
            assert code == 0
            code, out = await run(gw, image=image.name, args=["ls /vol 2>&1; echo end"])
            assert (code, out.split()[-1]) == (0, "end") and "f" not in out.split()
