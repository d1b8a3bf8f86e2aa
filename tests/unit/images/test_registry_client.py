"""The registry client against small local servers that misbehave on purpose.

A real registry (tests/integration/images) cannot serve a wrong digest header, an endless
stream or a Bearer challenge; these stubs can.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from contextlib import aclosing

import pytest
import trio

from actors.errors import DataLoss, InvalidArgument, NotFound, Unauthenticated, Unavailable
from actors.images import _registry as registry_module
from actors.images._auth import Credentials
from actors.images._digest import digest_of
from actors.images._dockerconfig import DockerConfig
from actors.images._media import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Descriptor
from actors.images._reference import parse_reference
from actors.images._registry import Registry, default_tls, is_plain_http, open_registry
from tests.httpstub import Reply, Request, http_stub

CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest_of(b"x")]},
    }
).encode()
LAYER = b"layer-bytes" * 1000
CONFIG_DESC = Descriptor(media_type=OCI_CONFIG, digest=digest_of(CONFIG), size=len(CONFIG))
LAYER_DESC = Descriptor(media_type=OCI_LAYER, digest=digest_of(LAYER), size=len(LAYER))
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": CONFIG_DESC.digest, "size": CONFIG_DESC.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": LAYER_DESC.digest, "size": LAYER_DESC.size}],
    }
).encode()
MANIFEST_DIGEST = digest_of(MANIFEST)
SECRET = "pa55-word-not-to-show"


@pytest.fixture(autouse=True)
def _no_retry_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_RETRY_DELAYS", (0.0, 0.0))


def registry_handler(
    *,
    manifest: bytes = MANIFEST,
    manifest_headers: dict[str, str] | None = None,
    layer: Reply | None = None,
) -> Callable[[Request], Reply]:
    """A minimal registry serving one image under repo ``ns/app``."""

    def handle(request: Request) -> Reply:
        path = request.path
        if path in ("/v2/ns/app/manifests/v1", f"/v2/ns/app/manifests/{MANIFEST_DIGEST}"):
            headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": MANIFEST_DIGEST}
            headers.update(manifest_headers or {})
            return Reply(200, headers, manifest)
        if path == f"/v2/ns/app/blobs/{CONFIG_DESC.digest}":
            return Reply(200, {}, CONFIG)
        if path == f"/v2/ns/app/blobs/{LAYER_DESC.digest}":
            return layer or Reply(200, {}, LAYER)
        return Reply(
            404,
            {"Content-Type": "application/json"},
            b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}',
        )

    return handle


async def _all(registry: Registry, descriptor: Descriptor, offset: int = 0) -> bytes:
    out = []
    async with aclosing(registry.blob(descriptor, offset)) as stream:
        async for chunk in stream:
            out.append(chunk)
    return b"".join(out)


def test_plain_http_only_for_loopback_and_insecure_list() -> None:
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.9.9.9", "[::1]:5000", "::1"):
        assert is_plain_http(host), host
    for host in (
        "registry.example",
        "registry.example:5000",
        "10.1.2.3:5000",
        "registry-1.docker.io",
    ):
        assert not is_plain_http(host), host
    assert is_plain_http("registry.example:5000", ["registry.example:5000"])
    assert is_plain_http("registry.example:5000", ["registry.example"])
    assert not is_plain_http("registry.example:5000", ["registry.example:6000"])
    assert is_plain_http("10.1.2.3:5000", ["10.0.0.0/8"])
    assert not is_plain_http("11.1.2.3:5000", ["10.0.0.0/8", "not a network/"])


async def test_urls_are_https_by_default() -> None:
    async with open_registry("registry.example/ns/app:v1") as registry:
        assert registry._base == "https://registry.example/v2/ns/app"
    async with open_registry("alpine") as registry:
        assert registry._base == "https://registry-1.docker.io/v2/library/alpine"
    async with open_registry("10.0.0.5:5000/a", insecure=["10.0.0.0/8"]) as registry:
        assert registry._base == "http://10.0.0.5:5000/v2/a"
    async with open_registry("localhost:5000/a") as registry:
        assert registry._base == "http://localhost:5000/v2/a"


def test_the_default_tls_context_verifies_and_is_built_once() -> None:
    context = default_tls()
    assert context is default_tls()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0  # a CA bundle is loaded


async def test_resolve_and_fetch_from_stub() -> None:
    with trio.fail_after(10):
        async with (
            http_stub(registry_handler()) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            resolved = await registry.resolve()
            assert resolved.digest == MANIFEST_DIGEST
            assert resolved.layers == [LAYER_DESC]
            assert await _all(registry, LAYER_DESC) == LAYER
    manifest_request = server.requests[0]
    assert manifest_request.headers["accept"].startswith(
        "application/vnd.docker.distribution.manifest.v2+json"
    )
    assert "application/vnd.oci.image.index.v1+json" in manifest_request.headers["accept"]


async def test_wrong_manifest_digest_header_is_refused() -> None:
    wrong = digest_of(b"something else")
    with trio.fail_after(10):
        async with (
            http_stub(
                registry_handler(manifest_headers={"Docker-Content-Digest": wrong})
            ) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(DataLoss, match="digest mismatch"):
                await registry.resolve()


async def test_manifest_body_not_matching_the_pinned_digest() -> None:
    tampered = MANIFEST + b" "  # same document, different bytes
    with trio.fail_after(10):
        async with (
            http_stub(
                registry_handler(manifest=tampered, manifest_headers={"Docker-Content-Digest": ""})
            ) as server,
            open_registry(
                f"{server.host}/ns/app@{MANIFEST_DIGEST}", credentials=DockerConfig()
            ) as reg,
        ):
            with pytest.raises(DataLoss, match=f"expected {MANIFEST_DIGEST}"):
                await reg.resolve()


async def test_huge_manifest_is_refused() -> None:
    huge = b" " * (5 << 20)
    with trio.fail_after(20):
        async with (
            http_stub(registry_handler(manifest=huge)) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(InvalidArgument, match="over the 4 MiB limit"):
                await registry.resolve()

        async def endless_manifest(stream: trio.SocketStream) -> None:
            while True:
                await stream.send_all(b" " * 65536)

        streaming = registry_handler(manifest=b"")

        def handle(request: Request) -> Reply:
            if "/manifests/" in request.path:
                return Reply(200, {"Content-Type": OCI_MANIFEST}, endless_manifest)
            return streaming(request)

        async with (
            http_stub(handle) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(InvalidArgument, match="over the 4 MiB limit"):
                await registry.resolve()


async def test_manifest_with_too_many_layers() -> None:
    body = json.loads(MANIFEST)
    body["layers"] = body["layers"] * 1000
    data = json.dumps(body).encode()
    with trio.fail_after(10):
        async with (
            http_stub(
                registry_handler(
                    manifest=data, manifest_headers={"Docker-Content-Digest": digest_of(data)}
                )
            ) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(InvalidArgument, match="lists 1000 layers, over the limit of 127"):
                await registry.resolve()


async def test_wrong_layer_bytes_same_size() -> None:
    corrupt = Reply(200, {}, LAYER[:-1] + b"!")
    with trio.fail_after(10):
        async with (
            http_stub(registry_handler(layer=corrupt)) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(DataLoss, match="digest mismatch"):
                await _all(registry, LAYER_DESC)


async def test_wrong_announced_size() -> None:
    with trio.fail_after(10):
        async with (
            http_stub(registry_handler(layer=Reply(200, {}, LAYER + b"x"))) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(DataLoss, match=f"announces {len(LAYER) + 1} bytes"):
                await _all(registry, LAYER_DESC)


async def test_short_stream() -> None:
    async def short(stream: trio.SocketStream) -> None:
        await stream.send_all(LAYER[:100])

    # No Content-Length: the body ends when the connection closes, 100 bytes in.
    with trio.fail_after(10):
        async with (
            http_stub(registry_handler(layer=Reply(200, {}, short))) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(DataLoss, match=f"ended after 100 of {len(LAYER)} bytes"):
                await _all(registry, LAYER_DESC)


async def test_endless_stream_is_cut_at_size_plus_one() -> None:
    sent = 0

    async def endless(stream: trio.SocketStream) -> None:
        nonlocal sent
        while True:
            await stream.send_all(b"z" * 4096)
            sent += 4096

    received = 0
    with trio.fail_after(10):
        async with (
            http_stub(registry_handler(layer=Reply(200, {}, endless))) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(DataLoss, match=f"more than the expected {len(LAYER)} bytes"):
                async with aclosing(registry.blob(LAYER_DESC)) as stream:
                    async for chunk in stream:
                        received += len(chunk)
    assert received <= len(LAYER)


async def test_unknown_blob_is_not_found() -> None:
    missing = Descriptor(media_type=OCI_LAYER, digest=digest_of(b"nope"), size=4)
    with trio.fail_after(10):
        async with (
            http_stub(registry_handler()) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(NotFound, match="BLOB_UNKNOWN"):
                await _all(registry, missing)


async def test_range_resume_and_servers_without_range() -> None:
    def ranged(request: Request) -> Reply:
        start = int(request.headers["range"].removeprefix("bytes=").rstrip("-"))
        return Reply(
            206, {"Content-Range": f"bytes {start}-{len(LAYER) - 1}/{len(LAYER)}"}, LAYER[start:]
        )

    def handler_with(layer_reply: Callable[[Request], Reply]) -> Callable[[Request], Reply]:
        base = registry_handler()

        def handle(request: Request) -> Reply:
            if request.path.endswith(LAYER_DESC.digest):
                return layer_reply(request)
            return base(request)

        return handle

    with trio.fail_after(10):
        async with (
            http_stub(handler_with(ranged)) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            assert await _all(registry, LAYER_DESC, 5000) == LAYER[5000:]
        assert server.requests[-1].headers["range"] == "bytes=5000-"
        # A server that ignores Range sends everything: we drop what we already hold.
        async with (
            http_stub(handler_with(lambda _r: Reply(200, {}, LAYER))) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            assert await _all(registry, LAYER_DESC, 5000) == LAYER[5000:]
            assert await _all(registry, LAYER_DESC, len(LAYER)) == b""
            with pytest.raises(InvalidArgument, match="outside blob"):
                await _all(registry, LAYER_DESC, len(LAYER) + 1)
        wrong_range = handler_with(
            lambda _r: Reply(206, {"Content-Range": "bytes 0-10/11"}, LAYER[:11])
        )
        async with (
            http_stub(wrong_range) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(DataLoss, match="range"):
                await _all(registry, LAYER_DESC, 5000)


async def test_blob_redirect_does_not_carry_credentials() -> None:
    async with http_stub(lambda _r: Reply(200, {}, LAYER)) as storage:

        def handle(request: Request) -> Reply:
            if request.path.endswith(LAYER_DESC.digest):
                if "authorization" not in request.headers:
                    return Reply(401, {"WWW-Authenticate": 'Basic realm="r"'})
                return Reply(307, {"Location": f"http://{storage.host}/cdn/blob"})
            return registry_handler()(request)

        with trio.fail_after(10):
            async with (
                http_stub(handle) as server,
                open_registry(
                    f"{server.host}/ns/app:v1", credentials=Credentials("me", SECRET)
                ) as registry,
            ):
                assert await _all(registry, LAYER_DESC) == LAYER
    assert [r.path for r in storage.requests] == ["/cdn/blob"]
    assert "authorization" not in storage.requests[0].headers
    assert server.requests[-1].headers["authorization"].startswith("Basic ")


async def test_bearer_token_flow() -> None:
    issued = "tok-" + "x" * 20

    def token_service(request: Request) -> Reply:
        return Reply(
            200,
            {"Content-Type": "application/json"},
            json.dumps({"access_token": issued, "token": "old", "expires_in": 300}).encode(),
        )

    async with http_stub(token_service) as auth:
        base = registry_handler()

        def handle(request: Request) -> Reply:
            if request.headers.get("authorization") != f"Bearer {issued}":
                challenge = f'Bearer realm="http://{auth.host}/token",service="stub-registry",scope="repository:ns/app:pull"'
                return Reply(
                    401,
                    {"WWW-Authenticate": challenge, "Content-Type": "application/json"},
                    b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                )
            return base(request)

        with trio.fail_after(10):
            async with (
                http_stub(handle) as server,
                open_registry(
                    f"{server.host}/ns/app:v1", credentials=Credentials("me", SECRET)
                ) as registry,
            ):
                resolved = await registry.resolve()
                assert await _all(registry, resolved.layers[0]) == LAYER
    # One token for the whole pull: the cached token is reused for config and layer.
    assert len(auth.requests) == 1
    token_request = auth.requests[0]
    assert token_request.query == {
        "service": ["stub-registry"],
        "scope": ["repository:ns/app:pull"],
    }
    assert token_request.headers["authorization"].startswith("Basic ")
    statuses = [r.headers.get("authorization", "") for r in server.requests]
    assert statuses.count("") == 1  # only the first request went without the token


async def test_bearer_token_refused_and_anonymous_denied() -> None:
    async with http_stub(
        lambda _r: Reply(401, {}, b'{"details":"' + SECRET.encode() + b'"}')
    ) as auth:

        def handle(request: Request) -> Reply:
            challenge = f'Bearer realm="http://{auth.host}/token",service="s"'
            return Reply(401, {"WWW-Authenticate": challenge})

        with trio.fail_after(10):
            async with http_stub(handle) as server:
                async with open_registry(
                    f"{server.host}/ns/app:v1", credentials=Credentials("me", SECRET)
                ) as registry:
                    with pytest.raises(
                        Unauthenticated, match="token service refused the credentials"
                    ) as caught:
                        await registry.resolve()
                assert SECRET not in str(caught.value)
                async with open_registry(
                    f"{server.host}/ns/app:v1", credentials=DockerConfig()
                ) as registry:
                    with pytest.raises(Unauthenticated, match="refused anonymous access"):
                        await registry.resolve()


async def test_registry_keeps_refusing_the_token() -> None:
    async with http_stub(lambda _r: Reply(200, {}, b'{"token":"t"}')) as auth:

        def handle(request: Request) -> Reply:
            return Reply(401, {"WWW-Authenticate": f'Bearer realm="http://{auth.host}/token"'})

        with trio.fail_after(10):
            async with (
                http_stub(handle) as server,
                open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
            ):
                with pytest.raises(Unauthenticated, match="requires authentication"):
                    await registry.resolve()
    assert len(server.requests) == 2  # the original and exactly one retry


async def test_unreachable_registry() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there now
    with trio.fail_after(10):
        async with open_registry(
            f"127.0.0.1:{port}/ns/app:v1", credentials=DockerConfig()
        ) as registry:
            with pytest.raises(Unavailable, match=f"cannot reach registry 127.0.0.1:{port}"):
                await registry.resolve()


async def test_reference_is_parsed_before_any_io() -> None:
    with pytest.raises(InvalidArgument, match="must be lowercase"):
        async with open_registry("registry.example/Bad"):
            pass
    # Docker's rule: an uppercase first component can only be a registry host.
    assert parse_reference("UPPER/case").domain == "UPPER"


async def test_identity_token_and_registry_token() -> None:
    def token_service(request: Request) -> Reply:
        if request.method != "POST" or b"refresh_token=idt-secret" not in request.body:
            return Reply(401)
        return Reply(200, {}, b'{"access_token":"from-refresh"}')

    async with http_stub(token_service) as auth:
        accepted = {"Bearer from-refresh", "Bearer direct-token"}
        base = registry_handler()

        def handle(request: Request) -> Reply:
            if request.headers.get("authorization") not in accepted:
                challenge = f'Bearer realm="http://{auth.host}/token",service="svc"'
                return Reply(401, {"WWW-Authenticate": challenge})
            return base(request)

        with trio.fail_after(10):
            async with http_stub(handle) as server:
                reference = f"{server.host}/ns/app:v1"
                async with open_registry(
                    reference, credentials=Credentials(identity_token="idt-secret")
                ) as registry:
                    assert (await registry.resolve()).digest == MANIFEST_DIGEST
                assert len(auth.requests) == 1
                form = auth.requests[0].body.decode()
                assert (
                    "grant_type=refresh_token" in form
                    and "scope=repository%3Ans%2Fapp%3Apull" in form
                )
                # A registry token from docker's config goes straight to the registry.
                async with open_registry(
                    reference, credentials=Credentials(registry_token="direct-token")
                ) as registry:
                    assert (await registry.resolve()).digest == MANIFEST_DIGEST
                assert len(auth.requests) == 1


async def test_transient_answers_are_retried() -> None:
    answers = iter([Reply(503), Reply(429, {"Retry-After": "0"})])
    base = registry_handler()

    def flaky(request: Request) -> Reply:
        if request.path.endswith("/manifests/v1"):
            return next(answers, None) or base(request)
        return base(request)

    with trio.fail_after(10):
        async with (
            http_stub(flaky) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            assert (await registry.resolve()).digest == MANIFEST_DIGEST
        manifest_calls = [r for r in server.requests if r.path.endswith("/manifests/v1")]
        assert len(manifest_calls) == 3
        async with (
            http_stub(lambda _r: Reply(503)) as server,
            open_registry(f"{server.host}/ns/app:v1", credentials=DockerConfig()) as registry,
        ):
            with pytest.raises(Unavailable, match="answered HTTP 503"):
                await registry.resolve()
        assert len(server.requests) == 3  # the first try and two retries, then the error
