"""What a pull costs in RPCs, fresh and again (every operation's budget is asserted).

A fresh pull of an image of ``n`` layers: Leases.Create, one Snapshots.List, one Content.Write
per blob (layers, config, manifest, index), one Content.Info per layer of at most one Write
message (read whole before its single COMMIT, so Info first spares downloading it when it is
present; a bigger layer's opening STAT answers AlreadyExists instead), Prepare + Apply +
Commit per layer, Images.Create, Leases.Delete. No Content.Info for the in-memory documents:
their one COMMIT answers AlreadyExists when they are present.
"""

from __future__ import annotations

import os

import pytest
import trio

from actors import Client, LayerProgress
from actors.images._ingest import CHUNK_SIZE
from actors.images._platform import host_platform
from tests.imagebuilder import BuiltImage, build_image, skopeo_push
from tests.registry_fixture import LocalRegistry, require_tools

from .ctrtools import rpc_delta

HOST = str(host_platform())
OTHER = "linux/arm64" if HOST != "linux/arm64" else "linux/amd64"


@pytest.fixture(scope="module")
def big_image(
    registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, BuiltImage]:
    require_tools("skopeo")
    base = tmp_path_factory.mktemp("pull-rpcs")
    # Random bytes stay big once gzipped: a layer of several Write messages, next to the
    # image's small ones.
    built = build_image(
        base / "rootfs",
        platforms=(HOST, OTHER),
        extra={"big.bin": os.urandom(3 * CHUNK_SIZE + 5)},
        layout=base / "layout",
        tag="v1",
    )
    reference = f"{registry.host}/rpcs/big-{os.getpid()}:v1"
    skopeo_push(base / "layout", "v1", reference)
    return reference, built


async def test_pull_costs_one_write_per_blob_and_no_info_for_big_layers(
    ns_client: Client, big_image: tuple[str, BuiltImage]
) -> None:
    client = ns_client
    reference, built = big_image
    layers = len(built.layers)
    small = sum(1 for layer in built.layers if layer.size <= CHUNK_SIZE)
    assert 0 < small < layers  # both kinds of layer are exercised
    with trio.fail_after(120):
        await client.images.store.snapshotter()  # the one-time probe is not the pull's
        before = dict(client.statistics().rpc.calls)
        failed = dict(client.statistics().rpc.failures)
        await client.images.pull(reference)
        fresh = rpc_delta(before, client.statistics().rpc.calls)
        assert fresh == {
            "Leases.Create": 1,
            "Snapshots.List": 1,
            "Content.Info": small,
            "Content.Write": layers + 3,  # and config, manifest, index
            "Snapshots.Prepare": layers,
            "Diff.Apply": layers,
            "Snapshots.Commit": layers,
            "Images.Create": 1,
            "Leases.Delete": 1,
        }
        # The only "failures": the small layers' Info answering NotFound.
        assert rpc_delta(failed, client.statistics().rpc.failures) == {"Content.Info": small}

        # Again: nothing is downloaded nor applied. A big layer's Write answers AlreadyExists
        # at its STAT (containerd adds the blob to the lease), a small one's Info finds it
        # (and Leases.AddResource holds it); each document's COMMIT answers AlreadyExists,
        # then its labels are set; the image record exists, so it is updated.
        events: list[LayerProgress] = []
        before = dict(client.statistics().rpc.calls)
        await client.images.pull(reference, progress=events.append)
        again = rpc_delta(before, client.statistics().rpc.calls)
    assert not any(e.state in ("downloading", "extracting") for e in events)
    assert {e.state for e in events if e.state != "waiting"} == {"exists", "done"}
    assert again == {
        "Leases.Create": 1,
        "Snapshots.List": 1,
        "Content.Info": small,
        "Leases.AddResource": small,
        "Content.Write": layers - small + 3,
        "Content.Update": 3,
        "Images.Create": 1,
        "Images.Update": 1,
        "Leases.Delete": 1,
    }
