"""An image's ``USER`` (and ``-u``) given by name, resolved from the image's own passwd/group.

Against the real containerd: the files are read from the container's prepared snapshot
(overlay layers, top first), never through a link, never from a FIFO; an unknown user or a
hostile file fails cleanly and leaves no container and no snapshot behind.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

from actors import Client, Image, image_spec
from actors.containerd._embedded import PrivateContainerd
from actors.control.gateway_client import GatewayError, connect_gateway
from actors.errors import InvalidArgument
from actors.images._platform import host_platform
from tests.imagebuilder import ExtraEntry, Fifo, Symlink, build_image, layout_tar

from ...conftest import unique_id
from .ctrtools import ctr
from .test_images_gateway import serve_like

pytestmark = pytest.mark.integration

HOST = str(host_platform())

PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"# a comment\n"
    b"www-data:x:33:33:www-data:/var/www:/bin/false\n"
    b"app:x:1000:1000::/home/app:/bin/sh\n"
    b"other:x:1001:1001::/home/other:/bin/sh\n"
)
GROUP = (
    b"root:x:0:\nwww-data:x:33:\nstaff:x:50:app\napp:x:1000:\nextra:x:60:other,app\nother:x:1001:\n"
)
ID_SCRIPT = ["/bin/sh", "-c", "echo $(id -u) $(id -g) $(id -G | tr ' ' '\\n' | sort -n)"]


async def load(
    client: Client, tmp_path: Path, name: str, extra: dict[str, ExtraEntry], user: str
) -> Image:
    layout = tmp_path / f"layout-{name}"
    build_image(
        tmp_path / "rootfs", platforms=(HOST,), extra=extra, layout=layout, tag=name, user=user
    )
    images = await client.images.import_archive(
        io.BytesIO(layout_tar(layout)), base_name=f"test/{unique_id('users')}"
    )
    return images[0]


async def output(client: Client, image: Image, **options: object) -> str:
    container = await client.new_container(unique_id("id"), image=image, **options)  # type: ignore[arg-type]
    with trio.fail_after(30):
        task = await container.start()
        assert task.io is not None and task.io.stdout is not None
        out = await task.io.stdout.read_all()
        status = await task.wait()
    await task.delete()
    await container.delete()
    assert status.code == 0, out
    return out.decode().strip()


def left_behind(containerd: PrivateContainerd, client: Client) -> tuple[str, list[str]]:
    containers = ctr(containerd, client.namespace, "containers", "ls", "-q")
    snapshotter = client.images.store._snapshotter or "overlayfs"
    listing = ctr(containerd, client.namespace, "snapshots", "--snapshotter", snapshotter, "ls")
    active = [line.split()[0] for line in listing.splitlines()[1:] if "Active" in line]
    return containers.strip(), active


async def test_image_user_by_name_runs_with_its_ids_and_groups(
    ns_client: Client, tmp_path: Path
) -> None:
    client = ns_client
    image = await load(
        client, tmp_path, "app", {"etc/passwd": PASSWD, "etc/group": GROUP}, user="app"
    )
    before = dict(client.statistics().rpc.calls)
    assert await output(client, image, args=ID_SCRIPT[2:]) == "1000 1000 50 60 1000"
    first = {
        k: v - before.get(k, 0)
        for k, v in client.statistics().rpc.calls.items()
        if v != before.get(k, 0)
    }
    # The first container of this config reads the files and fixes its record's spec once.
    assert first.get("Containers.Update") == 1 and sum(first.values()) == 8, first
    before = dict(client.statistics().rpc.calls)
    assert await output(client, image, args=ID_SCRIPT[2:]) == "1000 1000 50 60 1000"
    after = client.statistics().rpc.calls
    assert sum(after.values()) - sum(before.values()) == 7, "resolved from the cache"
    # Overrides, docker's forms: user:group by names, uid:group, a name with no groups.
    for user, expected in [
        ("www-data:www-data", "33 33 33"),
        ("1000:staff", "1000 50 50"),
        ("other", "1001 1001 60 1001"),
        ("app:60", "1000 60 60"),
        ("1234", "1234 0 0"),
    ]:
        spec = image_spec(image, entrypoint=ID_SCRIPT[:2], args=ID_SCRIPT[2:], user=user)
        assert await output(client, image, spec=spec) == expected, user


async def test_an_unknown_user_fails_clearly_and_leaves_nothing(
    ns_client: Client, containerd: PrivateContainerd, tmp_path: Path
) -> None:
    client = ns_client
    image = await load(
        client, tmp_path, "ghost", {"etc/passwd": PASSWD, "etc/group": GROUP}, user="ghost"
    )
    with pytest.raises(InvalidArgument, match="unable to find user ghost: no matching entries"):
        await client.new_container(unique_id("ghost"), image=image, args=["true"])
    spec = image_spec(image, args=["true"], user="app:nogroup")
    with pytest.raises(InvalidArgument, match="unable to find group nogroup"):
        await client.new_container(unique_id("ghost"), image=image, spec=spec)
    assert left_behind(containerd, client) == ("", [])
    assert client.containers() == []


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"etc/passwd": Symlink("/etc/passwd")}, "/etc/passwd in the image is a symbolic link"),
        ({"etc": Symlink("/etc")}, "/etc in the image is a symbolic link"),
        ({"etc/passwd": Fifo()}, "/etc/passwd in the image is not a regular file"),
        ({"etc/group": Fifo(), "etc/passwd": PASSWD}, "/etc/group in the image is not a regular"),
    ],
    ids=["passwd-symlink", "etc-symlink", "passwd-fifo", "group-fifo"],
)
async def test_hostile_passwd_files_are_refused_without_reading_the_host(
    ns_client: Client,
    containerd: PrivateContainerd,
    tmp_path: Path,
    extra: dict[str, ExtraEntry],
    why: str,
) -> None:
    client = ns_client
    image = await load(client, tmp_path, "hostile", extra, user="app")
    with trio.fail_after(30), pytest.raises(InvalidArgument) as caught:
        await client.new_container(unique_id("hostile"), image=image, args=["true"])
    message = caught.value.message
    assert why in message and "'app'" in message
    assert "/var/lib" not in message and "snapshots" not in message, "no host path"
    assert left_behind(containerd, client) == ("", [])


async def test_cli_user_name_through_the_gateway(
    containerd: PrivateContainerd, io_dir: Path, tmp_path: Path
) -> None:
    namespace = unique_id("usrgw").replace("_", "-")
    async with serve_like(containerd, namespace, io_dir) as served:
        image = await load(
            served.client, tmp_path, "gw", {"etc/passwd": PASSWD, "etc/group": GROUP}, user=""
        )
        async with connect_gateway(served.url, served.token) as gw:
            cid = unique_id("usrgw")
            await gw.call(
                "container.create",
                {"id": cid, "image": image.name, "args": ["true"], "user": "app"},
            )
            info = await gw.call("container.inspect", {"id": cid})
            assert info["user"] == "1000:1000"
            await gw.call("container.delete", {"id": cid})
            with pytest.raises(InvalidArgument, match="unable to find user ghost"):
                await gw.call(
                    "container.create",
                    {"id": cid, "image": image.name, "args": ["true"], "user": "ghost"},
                )
            with pytest.raises(GatewayError, match="user"):
                await gw.call(
                    "container.create",
                    {"id": cid, "image": image.name, "args": ["true"], "user": "../x"},
                )
        assert left_behind(containerd, served.client) == ("", [])
