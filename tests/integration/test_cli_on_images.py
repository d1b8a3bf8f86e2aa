"""The CLI's docker workflows on serve's own setup: containers on images (each on its own
snapshot), output kept in the per-container log, restart policies and --rm on top of both."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actors import NotFound, open_client
from actors.containerd._embedded import PrivateContainerd
from actors.control._cli import build_parser, serve_policy
from actors.control.gateway import Gateway, GatewayConfig
from actors.control.gateway_client import GatewayClient, connect_gateway
from actors.images._builtin import ensure_busybox_image

from ..conftest import unique_id
from .test_cli import Served, cli, remove

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(
    containerd: PrivateContainerd, io_dir: Path, tmp_path: Path
) -> AsyncIterator[Served]:
    """serve's policy from its default flags (images, no default rootfs) and /etc files."""
    policy = serve_policy(build_parser().parse_args(["serve"]))
    assert policy.default_rootfs is None
    token = secrets.token_urlsafe(32)
    namespace = unique_id("ns-cli-img")
    async with (
        open_client(containerd.address, namespace, state_dir=str(io_dir)) as client,
        trio.open_nursery() as nursery,
    ):
        await ensure_busybox_image(client.images)
        config = GatewayConfig(
            token=token, policy=policy, port=0, files_dir=str(tmp_path / "files")
        )
        gateway = Gateway(client, config)
        await nursery.start(gateway.serve)
        yield Served(client, gateway, f"ws://127.0.0.1:{gateway.port}", token)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def gw(served: Served) -> AsyncIterator[GatewayClient]:
    async with connect_gateway(served.url, served.token) as client:
        yield client


async def test_run_rm_on_an_image_has_etc_files_and_leaves_no_log(
    served: Served, gw: GatewayClient, tmp_path: Path
) -> None:
    cid = unique_id("img-rm")
    with trio.fail_after(60):
        done = await cli(served, "run", "--rm", "--name", cid, "-h", "box1", "busybox", "--",
                         "sh", "-c", "cat /etc/hosts; test -s /etc/resolv.conf && echo resolv")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"box1" in done.stdout and b"resolv" in done.stdout, done.stdout
    with pytest.raises(NotFound):
        await gw.call("container.inspect", {"id": cid})
    # Removed with the container: its log, its /etc files.
    assert not served.gateway.logs.directory(cid).exists()
    assert not any(cid in p.name for p in (tmp_path / "files").glob("*"))


async def test_detached_rm_is_removed_by_the_server_with_its_log(
    served: Served, gw: GatewayClient
) -> None:
    cid = unique_id("img-drm")
    with trio.fail_after(60):
        done = await cli(served, "run", "-d", "--rm", "--name", cid, "busybox", "--",
                         "sh", "-c", "echo bye")  # fmt: skip
        assert done.returncode == 0, done.stderr
        while True:
            try:
                await gw.call("container.inspect", {"id": cid})
            except NotFound:
                break
            await trio.sleep(0.05)
    assert not served.gateway.logs.directory(cid).exists()


async def test_restarted_tasks_write_to_the_same_log(served: Served, gw: GatewayClient) -> None:
    cid = unique_id("img-rst")
    try:
        with trio.fail_after(90):
            async with gw.subscribe({"container": [cid]}) as events:
                done = await cli(served, "run", "-d", "--restart", "on-failure:2", "--name", cid,
                                 "busybox", "--", "sh", "-c", "echo round; exit 1")  # fmt: skip
                assert done.returncode == 0, done.stderr
                dies = 0
                while dies < 3:
                    dies += (await events.receive())["Action"] == "die"
            logs = await cli(served, "logs", cid)
        assert logs.returncode == 0, logs.stderr
        # The policy's restarts are drained into the log like the user's start.
        assert logs.stdout == b"round\n" * 3, logs.stdout
    finally:
        await remove(gw, cid)


async def test_start_with_attach_reads_only_its_own_start(
    served: Served, gw: GatewayClient
) -> None:
    cid = unique_id("img-sa")
    try:
        with trio.fail_after(60):
            first = await cli(
                served, "run", "--name", cid, "busybox", "--", "sh", "-c", "echo once"
            )
            assert first.stdout == b"once\n", first.stderr
            await gw.call("task.delete", {"id": cid})
            started = await gw.call("task.start", {"id": cid, "attach": True})
            out = b""
            async with gw.attach(cid, ticket=started["stdio"]) as session:
                async for _, data in session.output():
                    out += data
            assert session.exit_code == 0
            # The ticket reads the log from this start on, not the earlier run's output.
            assert out == b"once\n", out
            logs = await cli(served, "logs", cid)
        assert logs.stdout == b"once\n" * 2, logs.stdout
    finally:
        await remove(gw, cid)
