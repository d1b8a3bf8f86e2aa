"""A Trio client for OCI distribution registries (pull side), over httpx.

One :class:`Registry` serves one repository. Resolve a reference to its manifest and config,
then stream the layers::

    async with open_registry("alpine:3.20") as registry:
        image = await registry.resolve()        # ResolvedImage
        for layer in image.layers:
            async with registry.blob(layer, offset=0) as stream:
                async for chunk in stream:      # verified on the fly; see BlobStream
                    ...

:func:`open_registry` keyword arguments:

- ``credentials``: a :class:`~actors.images._auth.Credentials` for this registry, a
  :class:`~actors.images._dockerconfig.DockerConfig`, or None to read docker's
  ``~/.docker/config.json`` (only when the registry asks for authentication; a credential
  helper it names is run as ``docker-credential-NAME get``). Pass ``DockerConfig()`` for
  anonymous access only.
- ``insecure``: registries reached over plain HTTP (``host``, ``host:port`` or an IP network
  such as ``10.0.0.0/8``). Loopback registries (``localhost``, ``127.0.0.0/8``, ``::1``) always
  are, like docker; everything else is HTTPS with certificate verification.
- ``platform``: the platform to pick from an index (default :func:`host_platform`).
- ``io_timeout``: seconds for connecting and between reads (not for a whole blob).
- ``verify``: an ``ssl.SSLContext`` for private CAs (default: certifi's CA bundle, or
  ``$SSL_CERT_FILE``).

Requests that fail to connect or get 408, 429, 502, 503 or 504 are retried twice (after 0.5 s
and 2 s, or the server's ``Retry-After`` up to 10 s); a blob that breaks mid-stream is not
retried here: resume it with ``offset``.

Authentication follows the registry's ``WWW-Authenticate`` challenge: on a 401 we fetch a
Bearer token for ``repository:NAME:pull`` (plus the challenge's scopes), or use Basic, and retry
once; a second 401 is :class:`~actors.errors.Unauthenticated`. Tokens are cached for their
``expires_in``. httpx drops the ``Authorization`` header when a redirect leaves the origin, so
a blob redirect to a storage host never carries our credentials. Descriptor ``urls`` (foreign
layers) are never fetched: a manifest must not make us request arbitrary URLs.

Errors: NotFound (unknown repository, tag or blob; no image for the platform),
Unauthenticated (no or refused credentials; the secret is never part of a message),
PermissionDenied (403), ResourceExhausted (429), Unavailable (connection, TLS, 5xx),
DataLoss (wrong digest, wrong size, a stream longer than its descriptor), InvalidArgument
(malformed or oversized documents).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import NoReturn

import httpx
import msgspec
import trio

from ..errors import (
    ContainerdError,
    DataLoss,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unknown,
)
from ._auth import Authenticator, Credentials, HttpRequest
from ._digest import BlobVerifier, digest_of, parse_digest
from ._dockerconfig import (
    DockerConfig,
    credential_helper,
    helper_server_url,
    load_docker_config,
    lookup_credentials,
    parse_helper_response,
)
from ._http import Body, error_detail, is_plain_http, transport_reason
from ._media import (
    MANIFEST_ACCEPT,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    decode_config,
    decode_manifest_or_index,
    is_layer_type,
    strip_parameters,
)
from ._platform import Platform, choose_manifest, host_platform, match_rank, parse_platform
from ._reference import Reference, parse_reference

__all__ = [
    "BlobStream",
    "Registry",
    "ResolvedImage",
    "default_tls",
    "is_plain_http",
    "open_registry",
]

_MAX_ERROR_BODY = 64 << 10
_MAX_TOKEN_BODY = 1 << 20
_HELPER_TIMEOUT = 30
# Transient answers are retried after these pauses (seconds); then the error stands.
_RETRY_DELAYS = (0.5, 2.0)
_RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
_MAX_RETRY_AFTER = 10.0
# An index may point at an index; more nesting than this is refused.
_MAX_INDEX_DEPTH = 3


class ResolvedImage(msgspec.Struct, frozen=True):
    """What a reference resolved to: every document verified against its digest.

    ``target`` is what the name points at (the index when there is one): store it as the
    image's target. ``manifest``/``config`` are those of the chosen platform; ``layers`` are
    the manifest's layer descriptors, base first. The raw bytes are kept so they can be
    written to a content store unchanged.
    """

    reference: Reference
    name: str
    target: Descriptor
    manifest_descriptor: Descriptor
    manifest: Manifest
    manifest_bytes: bytes
    config_descriptor: Descriptor
    config: ImageConfig
    config_bytes: bytes
    layers: list[Descriptor]
    platform: Platform
    index: Index | None = None
    index_bytes: bytes | None = None
    # Indexes below the top one (index -> index -> manifest), top first, with their bytes:
    # each is stored with its own GC labels, or GC would drop what the image needs.
    nested: tuple[tuple[Descriptor, bytes, Index], ...] = ()

    @property
    def digest(self) -> str:
        """The digest the name points at (docker's ``RepoDigest``)."""
        return self.target.digest


class BlobStream:
    """A blob's bytes from a registry, verified as they arrive.

    Use it as ``async with registry.blob(descriptor) as stream: async for chunk in stream``
    (a plain ``async for`` also works when you read to the end: the connection is released
    at the end or on any error). The stream fails with DataLoss as soon as it runs past the
    descriptor's size, and at its end when size or digest differ. With ``offset > 0``
    (resuming), or ``check_digest=False``, only the size is checked here: the caller's content
    store must check the digest at commit. ``received`` counts the bytes so far, ``offset``
    included.
    """

    def __init__(
        self, registry: Registry, descriptor: Descriptor, offset: int, *, check_digest: bool = True
    ) -> None:
        parse_digest(descriptor.digest)
        if not 0 <= offset <= descriptor.size:
            raise InvalidArgument(
                f"offset {offset} is outside blob {descriptor.digest} of {descriptor.size} bytes",
                local=True,
            )
        self.descriptor = descriptor
        self.offset = offset
        self._registry = registry
        self._what = f"blob {descriptor.digest}"
        self._verifier = BlobVerifier(
            descriptor.digest,
            descriptor.size,
            what=self._what,
            offset=offset,
            check_digest=check_digest,
        )
        self._body: Body | None = None
        self._skip = 0
        self._done = False

    @property
    def received(self) -> int:
        return self._verifier.received

    async def __aenter__(self) -> BlobStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> BlobStream:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._body is None:
                await self._open()
            assert self._body is not None
            while True:
                chunk = await self._body.next()
                if not chunk:
                    self._verifier.finish()
                    await self.aclose()
                    raise StopAsyncIteration
                if self._skip:
                    dropped = min(self._skip, len(chunk))
                    chunk = chunk[dropped:]
                    self._skip -= dropped
                    if not chunk:
                        continue
                self._verifier.update(chunk)
                return chunk
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        self._done = True
        if self._body is not None:
            await self._body.aclose()

    async def _open(self) -> None:
        descriptor, offset, what = self.descriptor, self.offset, self._what
        if offset == descriptor.size:
            self._body = None
            self._verifier.finish()
            self._done = True
            raise StopAsyncIteration
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = f"{self._registry._base}/blobs/{descriptor.digest}"
        response = await self._registry._request("GET", url, headers, what=what)
        self._body = Body(response, self._registry.host, what)
        if offset:
            content_range = response.headers.get("content-range", "")
            if response.status_code != 206:
                self._skip = offset  # no range support: discard what we already hold
            elif not content_range.startswith(f"bytes {offset}-"):
                raise DataLoss(
                    f"{what}: registry answered range {content_range!r} for offset {offset}",
                    local=True,
                )
        length = response.headers.get("content-length")
        if (
            length is not None
            and length.isdigit()
            and response.status_code == 200
            and int(length) != descriptor.size
        ):
            raise DataLoss(
                f"{what}: registry announces {length} bytes, descriptor says {descriptor.size}",
                local=True,
            )


class Registry:
    """The pull side of one repository on one registry. Make it with :func:`open_registry`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        reference: Reference,
        *,
        credentials: Credentials | DockerConfig | None,
        insecure: Iterable[str],
        platform: Platform,
    ) -> None:
        self._http = http
        self.reference = reference
        self.host = reference.api_host
        self.platform = platform
        scheme = "http" if is_plain_http(self.host, insecure) else "https"
        self._base = f"{scheme}://{self.host}/v2/{reference.path}"
        self._credentials_source = credentials
        self._loaded_credentials: tuple[Credentials | None, str] | None = None
        self.where = f"{reference.domain}/{reference.path}"
        self._auth = Authenticator(reference.path, self.where, self._credentials)

    # -- public API --------------------------------------------------------------------------

    async def resolve(self) -> ResolvedImage:
        """Resolve the reference to the index (if any), the platform's manifest and config."""
        body, media_type, digest = await self._get_manifest(self.reference.pin, None)
        doc = decode_manifest_or_index(body, media_type)
        target = Descriptor(media_type=_doc_type(doc), digest=digest, size=len(body))
        index: Index | None = None
        index_bytes: bytes | None = None
        descriptor = target
        depth = 0
        nested: list[tuple[Descriptor, bytes, Index]] = []
        while isinstance(doc, Index):
            depth += 1
            if depth > _MAX_INDEX_DEPTH:
                raise InvalidArgument(f"{self.where}: indexes nested too deep", local=True)
            if index is None:
                index, index_bytes = doc, body
            else:
                nested.append((descriptor, body, doc))
            entry = choose_manifest(doc.manifests, self.platform, name=str(self.reference))
            body = await self.fetch_manifest(entry)
            doc = decode_manifest_or_index(body, entry.media_type)
            descriptor = entry
        manifest = doc
        config_descriptor = manifest.config
        config_bytes = await self.fetch_blob(config_descriptor, limit=MAX_CONFIG_BYTES)
        config = decode_config(config_bytes, manifest)
        # A single-manifest image is matched on its config, like containerd does.
        if (
            index is None
            and config.os
            and config.architecture
            and match_rank(self.platform, config.platform) is None
        ):
            raise NotFound(
                f"{self.reference}: the image is for platform "
                f"{config.platform.normalized()}, not {self.platform.normalized()}",
                local=True,
            )
        return ResolvedImage(
            reference=self.reference,
            name=str(self.reference),
            target=target,
            manifest_descriptor=descriptor,
            manifest=manifest,
            manifest_bytes=body,
            config_descriptor=config_descriptor,
            config=config,
            config_bytes=config_bytes,
            layers=[d for d in manifest.layers if is_layer_type(d.media_type)],
            platform=self.platform,
            index=index,
            index_bytes=index_bytes,
            nested=tuple(nested),
        )

    async def head(self) -> Descriptor | None:
        """What the reference points at, from a HEAD (no body moves): a cheap "did the tag
        change?" check. None when the registry sends no digest or refuses HEAD; use
        :meth:`resolve` then."""
        url = f"{self._base}/manifests/{self.reference.pin}"
        try:
            response = await self._request(
                "HEAD", url, {"Accept": MANIFEST_ACCEPT}, what=str(self.reference)
            )
        except Unknown:  # 405 and friends: HEAD is optional for old registries
            return None
        await response.aclose()
        digest = response.headers.get("docker-content-digest", "")
        length = response.headers.get("content-length", "")
        media_type = strip_parameters(response.headers.get("content-type", ""))
        if not digest or not length.isdigit() or not media_type:
            return None
        try:
            parse_digest(digest)
        except InvalidArgument:
            raise DataLoss(
                f"{self.reference}: registry sent a malformed Docker-Content-Digest", local=True
            ) from None
        pinned = self.reference.digest
        if pinned is not None and digest != pinned:
            raise DataLoss(
                f"{self.reference}: registry says digest {digest}, expected {pinned}", local=True
            )
        return Descriptor(media_type=media_type, digest=digest, size=int(length))

    async def fetch_manifest(self, descriptor: Descriptor) -> bytes:
        """A manifest or index by its descriptor, checked against digest and size."""
        if descriptor.size > MAX_MANIFEST_BYTES:
            raise InvalidArgument(
                f"manifest {descriptor.digest} is {descriptor.size} bytes, over the "
                f"{MAX_MANIFEST_BYTES >> 20} MiB limit",
                local=True,
            )
        body, _, _ = await self._get_manifest(descriptor.digest, descriptor.media_type)
        verifier = BlobVerifier(
            descriptor.digest, descriptor.size, what=f"manifest {descriptor.digest}"
        )
        verifier.update(body)
        verifier.finish()
        return body

    async def fetch_blob(self, descriptor: Descriptor, *, limit: int) -> bytes:
        """A small blob (a config) whole, refused up front when over ``limit`` bytes."""
        if descriptor.size > limit:
            raise InvalidArgument(
                f"blob {descriptor.digest} is {descriptor.size} bytes, over the "
                f"{limit >> 20} MiB limit",
                local=True,
            )
        async with self.blob(descriptor) as stream:
            parts = [chunk async for chunk in stream]
        return b"".join(parts)

    def blob(
        self, descriptor: Descriptor, offset: int = 0, *, check_digest: bool = True
    ) -> BlobStream:
        """Stream a blob from ``offset``, verified as it arrives (see :class:`BlobStream`).

        ``check_digest=False`` checks only the size here: for bytes that go straight into
        containerd's content store, which computes the digest anyway and refuses to commit a
        mismatch (so hashing them here too would only double the CPU spent per byte).
        """
        return BlobStream(self, descriptor, offset, check_digest=check_digest)

    # -- HTTP with authentication ------------------------------------------------------------

    async def _get_manifest(self, pin: str, media_type: str | None) -> tuple[bytes, str, str]:
        """GET manifests/<pin>: (body, media type, digest), the digest checked if known."""
        accept = f"{media_type}, */*" if media_type else MANIFEST_ACCEPT
        url = f"{self._base}/manifests/{pin}"
        what = f"manifest {pin}" if media_type else str(self.reference)
        response = await self._request("GET", url, {"Accept": accept}, what=what)
        body = await self._read_bounded(response, MAX_MANIFEST_BYTES, what=f"manifest {pin}")
        served_type = strip_parameters(response.headers.get("content-type", ""))
        header_digest = response.headers.get("docker-content-digest")
        expected = pin if pin.partition(":")[0] in ("sha256", "sha512") else header_digest
        if expected:
            try:
                algorithm, _ = parse_digest(expected)
            except InvalidArgument:
                raise DataLoss(
                    f"{what}: registry sent a malformed Docker-Content-Digest", local=True
                ) from None
            actual = digest_of(body, algorithm)
            if actual != expected:
                raise DataLoss(
                    f"{what}: digest mismatch (expected {expected}, got {actual})", local=True
                )
        if header_digest and expected and header_digest != expected:
            raise DataLoss(
                f"{what}: registry says digest {header_digest}, expected {expected}", local=True
            )
        digest = expected or digest_of(body)
        return body, served_type, digest

    async def _read_bounded(self, response: httpx.Response, limit: int, *, what: str) -> bytes:
        """The whole body, refused as soon as it grows past ``limit``; always closes."""
        body = Body(response, self.host, what)
        try:
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise InvalidArgument(
                    f"{what} is {length} bytes, over the {limit >> 20} MiB limit", local=True
                )
            parts: list[bytes] = []
            total = 0
            while chunk := await body.next():
                total += len(chunk)
                if total > limit:
                    raise InvalidArgument(f"{what} is over the {limit >> 20} MiB limit", local=True)
                parts.append(chunk)
            return b"".join(parts)
        finally:
            await body.aclose()

    async def _request(
        self, method: str, url: str, headers: dict[str, str], *, what: str
    ) -> httpx.Response:
        """Send with our authorization; on 401 authenticate from the challenge, retry once."""
        for attempt in range(2):
            sent = dict(headers)
            authorization = self._auth.header(trio.current_time())
            if authorization:
                sent["Authorization"] = authorization
            response = await self._send_retrying(method, url, sent)
            if response.status_code != 401:
                if response.status_code >= 400:
                    await self._fail(response, what)
                return response
            challenge = response.headers.get_list("www-authenticate")
            await response.aclose()
            if attempt == 1:
                break
            await self._load_credentials()
            plan = self._auth.challenged(challenge)
            if plan.token_request is not None:
                await self._fetch_token(plan.token_request)
        raise self._auth.refused()

    async def _send_retrying(
        self, method: str, url: str, headers: dict[str, str]
    ) -> httpx.Response:
        """Send, retrying a refused connection and 408/429/5xx-gateway answers a few times."""
        for delay in (*_RETRY_DELAYS, None):
            try:
                response = await self._send(method, url, headers)
            except Unavailable:
                if delay is None:
                    raise
            else:
                if response.status_code not in _RETRY_STATUSES or delay is None:
                    return response
                after = response.headers.get("retry-after", "")
                if after.isdigit():
                    delay = min(float(after), _MAX_RETRY_AFTER)
                await response.aclose()
            await trio.sleep(delay)
        raise AssertionError("unreachable")  # the last round returns or raises

    async def _fetch_token(self, request: HttpRequest) -> None:
        headers = {**request.headers, "Accept": "application/json"}
        response = await self._send(request.method, request.url, headers, body=request.body)
        body = b""
        if response.status_code < 400:
            body = await self._read_bounded(response, _MAX_TOKEN_BODY, what="token")
        else:
            await response.aclose()
        self._auth.token_response(response.status_code, body, trio.current_time())

    async def _send(
        self, method: str, url: str, headers: dict[str, str], *, body: bytes = b""
    ) -> httpx.Response:
        request = self._http.build_request(method, url, headers=headers, content=body or None)
        try:
            return await self._http.send(request, stream=True)
        except httpx.TooManyRedirects:
            raise Unavailable(f"{self.host}: too many redirects", local=True) from None
        except httpx.TransportError as exc:
            raise Unavailable(
                f"cannot reach registry {self.host}: {transport_reason(exc)}", local=True
            ) from None

    def _credentials(self) -> tuple[Credentials | None, str]:
        return self._loaded_credentials or (None, "")

    async def _load_credentials(self) -> None:
        """Ours, or docker's (read only when a registry first asks): a credential helper
        when the config names one, else the config's ``auths``."""
        if self._loaded_credentials is not None:
            return
        source = self._credentials_source
        if isinstance(source, Credentials):
            self._loaded_credentials = (source, "")
            return
        config = source if source is not None else load_docker_config()
        domain = self.reference.domain
        helper = credential_helper(config, domain)
        found = await self._run_helper(helper) if helper else None
        self._loaded_credentials = (found or lookup_credentials(config, domain), "")

    async def _run_helper(self, program: str) -> Credentials | None:
        try:
            with trio.move_on_after(_HELPER_TIMEOUT) as scope:
                result = await trio.run_process(
                    [program, "get"],
                    stdin=helper_server_url(self.reference.domain),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
        except FileNotFoundError:
            raise Unauthenticated(
                f"{self.where}: the docker config names the credential helper {program}, "
                "which is not installed",
                local=True,
            ) from None
        if scope.cancelled_caught:
            raise Unauthenticated(
                f"{self.where}: the credential helper {program} did not answer", local=True
            )
        if result.returncode != 0:
            # "credentials not found": anonymous, like docker. Its output is never shown.
            return None
        return parse_helper_response(result.stdout)

    async def _fail(self, response: httpx.Response, what: str) -> NoReturn:
        try:
            body = await self._read_bounded(response, _MAX_ERROR_BODY, what="error")
        except ContainerdError:
            body = b""
        detail = error_detail(body)
        status = response.status_code
        suffix = f" ({detail})" if detail else ""
        if status == 404:
            raise NotFound(f"{what}: not found in {self.where}{suffix}", local=True)
        if status == 403:
            raise PermissionDenied(f"{what}: access denied by {self.host}{suffix}", local=True)
        if status == 429:
            raise ResourceExhausted(f"{what}: {self.host} is rate limiting{suffix}", local=True)
        if status >= 500:
            raise Unavailable(f"{what}: {self.host} answered HTTP {status}{suffix}", local=True)
        raise Unknown(f"{what}: {self.host} answered HTTP {status}{suffix}", local=True)


def _doc_type(doc: Manifest | Index) -> str:
    assert doc.media_type is not None  # decode sets it
    return doc.media_type


_default_tls: ssl.SSLContext | None = None


def default_tls() -> ssl.SSLContext:
    """httpx's default verifying context (certifi's CA bundle, or ``$SSL_CERT_FILE`` /
    ``$SSL_CERT_DIR``), built once per process and shared by every registry client.

    Building it parses the whole CA bundle: ~18 ms of CPU that every pull paid at its start,
    also from a plain-HTTP registry (httpx builds it with the client). An SSLContext is safe
    to share; nothing here changes it. The environment is read on the first use.
    """
    global _default_tls
    if _default_tls is None:
        _default_tls = httpx.create_ssl_context()
    return _default_tls


@asynccontextmanager
async def open_registry(
    reference: str | Reference,
    *,
    credentials: Credentials | DockerConfig | None = None,
    insecure: Iterable[str] = (),
    platform: Platform | str | None = None,
    io_timeout: float = 60.0,
    verify: ssl.SSLContext | bool = True,
) -> AsyncIterator[Registry]:
    """A :class:`Registry` for ``reference``'s repository; the connections close on exit."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if isinstance(platform, str):
        want = parse_platform(platform)
    elif platform is None:
        want = host_platform()
    else:
        want = platform.normalized()
    async with httpx.AsyncClient(
        follow_redirects=True,
        max_redirects=10,
        timeout=httpx.Timeout(io_timeout),
        verify=default_tls() if verify is True else verify,
        headers={"User-Agent": "containerd-actors"},
    ) as http:
        yield Registry(http, ref, credentials=credentials, insecure=tuple(insecure), platform=want)
