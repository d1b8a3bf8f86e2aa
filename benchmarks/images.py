"""Images benchmark: pull + unpack from a loopback registry, and lifecycles from the image.

The benchmark builds its own image (5 layers of random, incompressible bytes, ~100 MB in
all; smaller in smoke mode), pushes it with ``skopeo`` to a Debian ``docker-registry`` it
starts on loopback, then per repetition, alternating who goes first:

* *ours*: ``client.images.pull`` into a fresh namespace: wall time, our process CPU
  (``time.process_time``: every thread of ours), RPCs per pull (our counters);
* *ctr*: ``ctr images pull --plain-http`` into another fresh namespace: wall time and the
  CPU of the ctr process (its RPCs are invisible to our counters).

Each pull's image is removed with a synchronous GC afterwards, so the next pull really
downloads: with containerd's shared content policy a blob left in any namespace would make
the next ingest complete at once.

Then lifecycles of ``true`` from the pulled image (create with its own snapshot, start,
exit, delete task, delete container + snapshot): ours (RPCs and latency) vs
``ctr run --rm IMAGE`` (latency; 42 RPCs by the reference count, not measured here), one at
a time and then at concurrency 16 (throughput; ours and ctr alternating who goes first).
"""

from __future__ import annotations

import gzip
import io
import os
import resource
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import msgspec
import trio

from actors import Client, open_client
from actors.images._digest import digest_of
from actors.images._media import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    ContainerConfig,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    RootFS,
    encode,
)
from actors.images._platform import host_platform

from ._lab import Lab
from ._progress import Progress
from ._stats import Percentiles, percentiles

CTR_RUN_REFERENCE_RPCS = 42
TOOLS = ("docker-registry", "skopeo", "ctr")


CONCURRENCY = 16


class Config(msgspec.Struct, frozen=True, kw_only=True):
    layers: int
    layer_bytes: int
    reps: int
    lifecycles: int
    concurrent_lifecycles: int = 0


def config(quick: bool, *, smoke: bool = False) -> Config:
    if smoke:
        return Config(layers=2, layer_bytes=1 << 20, reps=1, lifecycles=3, concurrent_lifecycles=16)
    if quick:
        return Config(
            layers=5, layer_bytes=25 << 20, reps=3, lifecycles=10, concurrent_lifecycles=48
        )
    return Config(layers=5, layer_bytes=25 << 20, reps=5, lifecycles=30, concurrent_lifecycles=96)


def estimate(cfg: Config) -> float:
    return (
        20.0
        + cfg.reps * 2 * cfg.layers * cfg.layer_bytes / (40 << 20)
        + cfg.lifecycles * 0.5
        + cfg.concurrent_lifecycles * 2 * 0.06
    )


class Pull(msgspec.Struct, frozen=True, kw_only=True):
    wall_s: float
    cpu_s: float
    rpcs: int = 0


class Result(msgspec.Struct, kw_only=True):
    image_bytes: int
    layers: int
    ours: list[Pull]
    ctr: list[Pull]
    rpcs_by_method: dict[str, int]
    lifecycle_ours_ms: Percentiles | None = None
    lifecycle_ctr_ms: Percentiles | None = None
    rpcs_per_lifecycle: float = 0.0
    ctr_rpcs_per_lifecycle: int = CTR_RUN_REFERENCE_RPCS
    # At CONCURRENCY: lifecycles per second, one figure per repetition (ours, ctr).
    throughput_ours: list[float] = msgspec.field(default_factory=list)
    throughput_ctr: list[float] = msgspec.field(default_factory=list)
    rpcs_per_concurrent_lifecycle: float = 0.0


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _layer(size: int, index: int) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = os.urandom(size)
        info = tarfile.TarInfo(f"data/layer{index}.bin")
        info.size = len(data)
        info.mtime = 1_700_000_000
        tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, compresslevel=1, mtime=0), digest_of(uncompressed)


def build_layout(cfg: Config, layout: Path, busybox_layer: tuple[bytes, str]) -> int:
    """An OCI layout with busybox at the bottom (so ``true`` runs) plus the random layers."""
    blobs: dict[str, bytes] = {}
    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    for blob, diff_id in [busybox_layer] + [
        _layer(cfg.layer_bytes, i) for i in range(cfg.layers - 1)
    ]:
        desc = Descriptor(media_type=OCI_LAYER_GZIP, digest=digest_of(blob), size=len(blob))
        blobs[desc.digest] = blob
        layers.append(desc)
        diff_ids.append(diff_id)
    platform = host_platform()
    config = encode(
        ImageConfig(
            architecture=platform.architecture,
            os=platform.os,
            rootfs=RootFS(type="layers", diff_ids=diff_ids),
            config=ContainerConfig(cmd=["true"], env=["PATH=/bin"]),
        )
    )
    config_desc = Descriptor(media_type=OCI_CONFIG, digest=digest_of(config), size=len(config))
    blobs[config_desc.digest] = config
    manifest = encode(
        Manifest(schema_version=2, media_type=OCI_MANIFEST, config=config_desc, layers=layers)
    )
    manifest_desc = Descriptor(
        media_type=OCI_MANIFEST,
        digest=digest_of(manifest),
        size=len(manifest),
        annotations={"org.opencontainers.image.ref.name": "bench"},
    )
    blobs[manifest_desc.digest] = manifest
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = Index(schema_version=2, media_type=OCI_INDEX, manifests=[manifest_desc])
    (layout / "index.json").write_bytes(encode(index))
    return sum(len(b) for b in blobs.values())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ctr(lab: Lab, namespace: str, *args: str) -> None:
    subprocess.run(
        ["ctr", "-a", lab.address, "-n", namespace, *args],
        check=True,
        capture_output=True,
        timeout=600,
    )


async def _pull_ours(lab: Lab, namespace: str, reference: str) -> Pull:
    async with open_client(lab.address, namespace, state_dir=lab.state_dir(namespace)) as client:
        await client.images.store.snapshotter()  # the one-time probe is not the pull's
        before = client.statistics().rpc.total
        cpu, wall = time.process_time(), time.monotonic()
        await client.images.pull(reference)
        result = Pull(
            wall_s=time.monotonic() - wall,
            cpu_s=time.process_time() - cpu,
            rpcs=client.statistics().rpc.total - before,
        )
        await client.images.remove(reference)
    return result


async def _pull_ctr(lab: Lab, namespace: str, reference: str) -> Pull:
    cpu, wall = _children_cpu(), time.monotonic()
    await trio.to_thread.run_sync(
        lambda: _ctr(lab, namespace, "images", "pull", "--plain-http", reference)
    )
    result = Pull(wall_s=time.monotonic() - wall, cpu_s=_children_cpu() - cpu)
    await trio.to_thread.run_sync(lambda: _ctr(lab, namespace, "images", "rm", "--sync", reference))
    return result


async def _lifecycles(client: Client, reference: str, count: int) -> tuple[list[float], float]:
    image = await client.images.get(reference)
    latencies: list[float] = []
    before = client.statistics().rpc.total
    for i in range(count):
        began = time.monotonic()
        container = await client.new_container(f"bench-img-{i}", image=image, args=["true"])
        task = await container.start()
        await task.wait()
        await task.delete()
        await container.delete()
        latencies.append((time.monotonic() - began) * 1000)
    return latencies, (client.statistics().rpc.total - before) / max(1, count)


async def _concurrent_ours(client: Client, reference: str, count: int, tag: str) -> float:
    """``count`` lifecycles from the image, CONCURRENCY at a time: lifecycles per second."""
    image = await client.images.get(reference)
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(i: int) -> None:
        async with limiter:
            container = await client.new_container(f"bench-{tag}-{i}", image=image, args=["true"])
            task = await container.start()
            await task.wait()
            await task.delete()
            await container.delete()

    began = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return count / (time.monotonic() - began)


async def _concurrent_ctr(lab: Lab, namespace: str, reference: str, count: int, tag: str) -> float:
    """The same through ``ctr run --rm``, CONCURRENCY processes at a time."""
    limiter = trio.CapacityLimiter(CONCURRENCY)
    fifo_dir = lab.fifo_dir()

    async def one(i: int) -> None:
        args = ("run", "--rm", "--fifo-dir", fifo_dir, reference, f"bench-{tag}-{i}", "true")
        await trio.to_thread.run_sync(lambda: _ctr(lab, namespace, *args), limiter=limiter)

    began = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return count / (time.monotonic() - began)


async def run(lab: Lab, cfg: Config, progress: Progress) -> Result:
    from actors.images._builtin import busybox_layer
    from tests.registry_fixture import _start, _stop

    base = lab.base / "images-bench"
    layout = base / "layout"
    progress.say(f"building a {cfg.layers}-layer image of random data")
    busybox = await trio.to_thread.run_sync(busybox_layer)
    size = await trio.to_thread.run_sync(build_layout, cfg, layout, busybox)
    registry = await trio.to_thread.run_sync(lambda: _start(base / "registry", with_auth=False))
    try:
        reference = f"{registry.host}/bench/random:v1"
        progress.say(f"pushing {size / 1e6:.0f} MB to the loopback registry with skopeo")
        await trio.to_thread.run_sync(
            lambda: subprocess.run(
                ["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
                 f"oci:{layout}:bench", f"docker://{reference}"],
                check=True, capture_output=True, timeout=600,
            )
        )  # fmt: skip
        ours: list[Pull] = []
        ctr: list[Pull] = []
        by_method: dict[str, int] = {}
        for rep in range(cfg.reps):
            order = ("ours", "ctr") if rep % 2 == 0 else ("ctr", "ours")
            for who in order:
                namespace = lab.namespace(f"img-{who}-{rep}")
                progress.say(f"pull {rep + 1}/{cfg.reps}: {who}")
                if who == "ours":
                    ours.append(await _pull_ours(lab, namespace, reference))
                else:
                    ctr.append(await _pull_ctr(lab, namespace, reference))
        # RPCs by method of one pull, for the report.
        namespace = lab.namespace("img-life")
        async with open_client(
            lab.address, namespace, state_dir=lab.state_dir(namespace)
        ) as client:
            await client.images.store.snapshotter()
            before = dict(client.statistics().rpc.calls)
            await client.images.pull(reference)
            after = client.statistics().rpc.calls
            by_method = {
                k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)
            }
            progress.say(f"{cfg.lifecycles} lifecycles from the pulled image: ours")
            await _lifecycles(client, reference, 1)  # warm
            latencies, rpcs = await _lifecycles(client, reference, cfg.lifecycles)
        progress.say(f"{cfg.lifecycles} lifecycles from the pulled image: ctr run --rm")
        ctr_latencies: list[float] = []
        fifo_dir = lab.fifo_dir()
        for i in range(cfg.lifecycles):
            began = time.monotonic()
            args = ("run", "--rm", "--fifo-dir", fifo_dir, reference, f"bench-ctr-{i}", "true")
            await trio.to_thread.run_sync(_ctr, lab, namespace, *args)
            ctr_latencies.append((time.monotonic() - began) * 1000)
        throughput_ours: list[float] = []
        throughput_ctr: list[float] = []
        concurrent_rpcs = 0.0
        if cfg.concurrent_lifecycles:
            async with open_client(
                lab.address, namespace, state_dir=lab.state_dir(namespace)
            ) as client:
                for rep in range(2):
                    order = ("ours", "ctr") if rep % 2 == 0 else ("ctr", "ours")
                    for who in order:
                        progress.say(
                            f"{cfg.concurrent_lifecycles} lifecycles at {CONCURRENCY} from the "
                            f"image ({rep + 1}/2): {who}"
                        )
                        tag = f"c{CONCURRENCY}-{who}-{rep}"
                        if who == "ours":
                            rpcs_before = client.statistics().rpc.total
                            throughput_ours.append(
                                await _concurrent_ours(
                                    client, reference, cfg.concurrent_lifecycles, tag
                                )
                            )
                            concurrent_rpcs = (
                                client.statistics().rpc.total - rpcs_before
                            ) / cfg.concurrent_lifecycles
                        else:
                            throughput_ctr.append(
                                await _concurrent_ctr(
                                    lab, namespace, reference, cfg.concurrent_lifecycles, tag
                                )
                            )
        return Result(
            throughput_ours=throughput_ours,
            throughput_ctr=throughput_ctr,
            rpcs_per_concurrent_lifecycle=concurrent_rpcs,
            image_bytes=size,
            layers=cfg.layers,
            ours=ours,
            ctr=ctr,
            rpcs_by_method=by_method,
            lifecycle_ours_ms=percentiles(latencies),
            lifecycle_ctr_ms=percentiles(ctr_latencies),
            rpcs_per_lifecycle=rpcs,
        )
    finally:
        await trio.to_thread.run_sync(lambda: _stop(registry))
