"""Pulls from a real registry (Debian's docker-registry on loopback), images pushed by skopeo."""

from __future__ import annotations

import base64
import json
import os
import traceback
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from actors.errors import DataLoss, NotFound, Unauthenticated
from actors.images._auth import Credentials
from actors.images._dockerconfig import DockerConfig, load_docker_config
from actors.images._media import Descriptor
from actors.images._platform import host_platform
from actors.images._registry import Registry, open_registry
from tests.imagebuilder import BuiltImage, build_image, skopeo_push
from tests.registry_fixture import LocalRegistry, require_tools

pytestmark = pytest.mark.integration

HOST = str(host_platform())
OTHER = "linux/arm64" if HOST != "linux/arm64" else "linux/amd64"
FOREIGN = "linux/s390x"


@dataclass
class Pushed:
    image: BuiltImage
    reference: str  # host/repo:tag


def _push(
    registry: LocalRegistry,
    base: Path,
    repo: str,
    *,
    platforms: tuple[str, ...],
    extra: dict[str, bytes] | None = None,
) -> Pushed:
    require_tools("skopeo")
    layout = base / repo.replace("/", "_")
    image = build_image(base / "rootfs", platforms=platforms, extra=extra, layout=layout, tag="v1")
    reference = f"{registry.host}/{repo}:v1"
    skopeo_push(layout, "v1", reference, credentials=registry.credentials)
    return Pushed(image, reference)


@pytest.fixture(scope="session")
def pushed(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return _push(
        registry, tmp_path_factory.mktemp("images"), "test/busybox", platforms=(HOST, OTHER)
    )


@pytest.fixture(scope="session")
def foreign(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return _push(registry, tmp_path_factory.mktemp("foreign"), "test/foreign", platforms=(FOREIGN,))


@pytest.fixture(scope="session")
def pushed_auth(auth_registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return _push(auth_registry, tmp_path_factory.mktemp("auth"), "private/app", platforms=(HOST,))


async def _fetch(registry: Registry, descriptor: Descriptor, offset: int = 0) -> bytes:
    parts = []
    async with aclosing(registry.blob(descriptor, offset)) as stream:
        async for chunk in stream:
            parts.append(chunk)
    return b"".join(parts)


async def test_pull_by_tag_verifies_everything(pushed: Pushed) -> None:
    image = pushed.image
    with trio.fail_after(30):
        async with open_registry(pushed.reference, credentials=DockerConfig()) as registry:
            resolved = await registry.resolve()
            assert resolved.target == image.target
            assert resolved.index is not None and resolved.index_bytes == image.blob(image.target)
            want = image.manifests[HOST]
            assert resolved.manifest_descriptor.digest == want.digest
            assert resolved.manifest_bytes == image.blob(want)
            assert resolved.config_bytes == image.blob(resolved.config_descriptor)
            assert resolved.config.config.entrypoint == ["/bin/sh", "-c"]
            assert resolved.config.config.working_dir == "/data"
            assert resolved.config.rootfs.diff_ids == image.diff_ids
            assert resolved.layers == image.layers
            for layer in resolved.layers:
                assert await _fetch(registry, layer) == image.blob(layer)


async def test_pull_by_digest(pushed: Pushed) -> None:
    image = pushed.image
    name = pushed.reference.rsplit(":", 1)[0]
    other = image.manifests[OTHER]
    with trio.fail_after(30):
        async with open_registry(
            f"{name}@{other.digest}", credentials=DockerConfig(), platform=OTHER
        ) as registry:
            resolved = await registry.resolve()
    # A manifest digest resolves straight to that manifest (no index involved).
    assert resolved.index is None
    assert resolved.target.digest == other.digest
    assert resolved.config.architecture == OTHER.split("/")[1]
    with trio.fail_after(30):
        async with open_registry(
            f"{name}@{image.target.digest}", credentials=DockerConfig()
        ) as registry:
            resolved = await registry.resolve()
    assert resolved.index is not None
    assert resolved.manifest_descriptor.digest == image.manifests[HOST].digest


async def test_index_platform_choice_and_missing_platform(pushed: Pushed) -> None:
    with trio.fail_after(30):
        async with open_registry(
            pushed.reference, credentials=DockerConfig(), platform=OTHER
        ) as registry:
            resolved = await registry.resolve()
        assert resolved.manifest_descriptor.digest == pushed.image.manifests[OTHER].digest
        async with open_registry(
            pushed.reference, credentials=DockerConfig(), platform="linux/riscv64"
        ) as registry:
            with pytest.raises(NotFound, match=r"no image for platform linux/riscv64") as caught:
                await registry.resolve()
    assert HOST in str(caught.value) and OTHER in str(caught.value)


async def test_image_only_for_another_platform(foreign: Pushed) -> None:
    with trio.fail_after(30):
        async with open_registry(foreign.reference, credentials=DockerConfig()) as registry:
            with pytest.raises(NotFound, match=rf"is for platform {FOREIGN}, not {HOST}"):
                await registry.resolve()


async def test_unknown_tag_and_repository(registry: LocalRegistry, pushed: Pushed) -> None:
    with trio.fail_after(30):
        async with open_registry(
            f"{registry.host}/test/busybox:nope", credentials=DockerConfig()
        ) as reg:
            with pytest.raises(NotFound, match="MANIFEST_UNKNOWN"):
                await reg.resolve()
        async with open_registry(f"{registry.host}/no/such:v1", credentials=DockerConfig()) as reg:
            with pytest.raises(NotFound, match="not found"):
                await reg.resolve()


async def test_blob_resume_from_offset(pushed: Pushed) -> None:
    layer = pushed.image.layers[0]
    offset = layer.size // 3
    with trio.fail_after(30):
        async with open_registry(pushed.reference, credentials=DockerConfig()) as registry:
            tail = await _fetch(registry, layer, offset)
    assert tail == pushed.image.blob(layer)[offset:]


async def test_corrupted_blob_in_storage_is_refused(
    registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A layer of its own: corrupting a shared blob would break the other tests.
    unique = _push(
        registry,
        tmp_path_factory.mktemp("corrupt"),
        "test/corrupt",
        platforms=(HOST,),
        extra={"unique": os.urandom(4096)},
    )
    layer = unique.image.layers[-1]
    path = registry.blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with trio.fail_after(30):
        async with open_registry(unique.reference, credentials=DockerConfig()) as reg:
            await reg.resolve()
            with pytest.raises(DataLoss, match="digest mismatch"):
                await _fetch(reg, layer)


async def test_basic_auth_right_credentials(
    auth_registry: LocalRegistry, pushed_auth: Pushed
) -> None:
    assert auth_registry.username and auth_registry.password
    credentials = Credentials(auth_registry.username, auth_registry.password)
    with trio.fail_after(30):
        async with open_registry(pushed_auth.reference, credentials=credentials) as registry:
            resolved = await registry.resolve()
            layer = resolved.layers[-1]
            assert await _fetch(registry, layer) == pushed_auth.image.blob(layer)
    assert resolved.target == pushed_auth.image.target


async def test_basic_auth_wrong_credentials_never_echo_the_password(
    auth_registry: LocalRegistry, pushed_auth: Pushed
) -> None:
    secret = "S3cret-never-shown-" + os.urandom(6).hex()
    with trio.fail_after(30):
        async with open_registry(
            pushed_auth.reference, credentials=Credentials("tester", secret)
        ) as registry:
            with pytest.raises(Unauthenticated, match="refused the credentials") as caught:
                await registry.resolve()
    rendered = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert secret not in rendered
    assert base64.b64encode(f"tester:{secret}".encode()).decode() not in rendered
    with trio.fail_after(30):
        async with open_registry(pushed_auth.reference, credentials=DockerConfig()) as registry:
            with pytest.raises(Unauthenticated, match="requires a username and password"):
                await registry.resolve()


async def test_docker_config_credentials(
    auth_registry: LocalRegistry,
    pushed_auth: Pushed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert auth_registry.username and auth_registry.password
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {f"http://{auth_registry.host}/v2/": {"auth": token}}})
    )
    with trio.fail_after(30):
        async with open_registry(
            pushed_auth.reference, credentials=load_docker_config(config_dir / "config.json")
        ) as registry:
            assert (await registry.resolve()).target == pushed_auth.image.target
    # credentials=None reads docker's own file, honouring $DOCKER_CONFIG.
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    with trio.fail_after(30):
        async with open_registry(pushed_auth.reference) as registry:
            assert (await registry.resolve()).target == pushed_auth.image.target


async def test_head_reports_the_target_without_a_body(pushed: Pushed) -> None:
    with trio.fail_after(30):
        async with open_registry(pushed.reference, credentials=DockerConfig()) as registry:
            assert await registry.head() == pushed.image.target
        async with open_registry(
            pushed.reference.rsplit(":", 1)[0] + ":missing", credentials=DockerConfig()
        ) as registry:
            with pytest.raises(NotFound):
                await registry.head()


async def test_docker_credential_helpers(
    auth_registry: LocalRegistry,
    pushed_auth: Pushed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert auth_registry.username and auth_registry.password
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A helper that answers only for our registry (its stdin is the server URL).
    helper = bin_dir / "docker-credential-fake"
    helper.write_text(
        "#!/bin/sh\n"
        "read -r url\n"
        f'[ "$url" = "{auth_registry.host}" ] || {{ echo "credentials not found"; exit 1; }}\n'
        f'printf \'{{"Username":"{auth_registry.username}","Secret":"{auth_registry.password}"}}\'\n'
    )
    helper.chmod(0o755)
    (bin_dir / "docker-credential-empty").write_text(
        "#!/bin/sh\necho 'credentials not found'\nexit 1\n"
    )
    (bin_dir / "docker-credential-empty").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def config(**values: object) -> DockerConfig:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(values))
        return load_docker_config(path)

    with trio.fail_after(30):
        # credHelpers for this host wins over credsStore and over auths.
        chosen = config(
            credHelpers={auth_registry.host: "fake"},
            credsStore="missing",
            auths={auth_registry.host: {"username": "wrong", "password": "wrong"}},
        )
        async with open_registry(pushed_auth.reference, credentials=chosen) as registry:
            assert (await registry.resolve()).target == pushed_auth.image.target
        async with open_registry(
            pushed_auth.reference, credentials=config(credsStore="fake")
        ) as registry:
            assert (await registry.resolve()).target == pushed_auth.image.target
        async with open_registry(
            pushed_auth.reference, credentials=config(credsStore="missing")
        ) as registry:
            with pytest.raises(
                Unauthenticated, match="docker-credential-missing, which is not installed"
            ):
                await registry.resolve()
        # "credentials not found" means anonymous, like docker.
        async with open_registry(
            pushed_auth.reference, credentials=config(credsStore="empty")
        ) as registry:
            with pytest.raises(Unauthenticated, match="requires a username and password"):
                await registry.resolve()


async def test_concurrent_layers_and_cancel_mid_blob(pushed: Pushed) -> None:
    image = pushed.image
    fetched: dict[str, bytes] = {}
    with trio.fail_after(30):
        async with open_registry(pushed.reference, credentials=DockerConfig()) as registry:
            resolved = await registry.resolve()

            async def fetch(layer: Descriptor) -> None:
                fetched[layer.digest] = await _fetch(registry, layer)

            async with trio.open_nursery() as nursery:
                for layer in resolved.layers:
                    nursery.start_soon(fetch, layer)
            assert fetched == {layer.digest: image.blob(layer) for layer in resolved.layers}
            # Cancelled after the first chunk: the connection is released, the client still works.
            big = max(resolved.layers, key=lambda d: d.size)
            with trio.CancelScope() as scope:
                async with registry.blob(big) as stream:
                    async for _chunk in stream:
                        assert 0 < stream.received <= big.size
                        scope.cancel()
                        await trio.lowlevel.checkpoint()  # cancelled here
            assert scope.cancelled_caught
            assert await _fetch(registry, big) == image.blob(big)
