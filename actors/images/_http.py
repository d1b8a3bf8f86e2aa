"""HTTP plumbing for the registry client: plain-HTTP policy, bodies, error texts.

- :func:`is_plain_http`: loopback registries (``localhost``, ``127.0.0.0/8``, ``::1``) and the
  operator's insecure list (``host``, ``host:port``, or an IP network) speak plain HTTP; every
  other registry HTTPS. Host names are not resolved here.
- :class:`Body`: a streamed httpx response read chunk by chunk that never leaves httpx's
  generator chain suspended (see its docstring).
- :func:`error_detail` and :func:`transport_reason`: short, secret-free texts for errors.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable

import httpcore
import httpx
import msgspec
import trio

from ..errors import Unavailable

__all__ = ["Body", "error_detail", "is_plain_http", "transport_reason"]

READ_BYTES = 1 << 20
"""Bytes httpcore asks the socket for per read of an HTTP/1.1 body (its own default: 64 KiB).

Each read is a pass through httpcore, h11 and Trio's socket layer, and at 64 KiB those
passes were the largest CPU cost of a layer download on our side (a 106 MB pull: ~1,700 of
them). A read returns what the socket holds, so this only makes reads bigger when more bytes
are there; it cut the client CPU of the images benchmark's pull by ~14%. httpcore has no
per-client setting for it: this is its class attribute, so it applies to every HTTP/1.1
connection in the process (never lowered, should something else have raised it).
"""
# httpcore comes with httpx; should a later one drop the attribute, reads stay at its size.
if getattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", READ_BYTES) < READ_BYTES:
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = READ_BYTES


def _is_loopback(host: str) -> bool:
    hostname = _hostname(host)
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_plain_http(host: str, insecure: Iterable[str] = ()) -> bool:
    """Whether registry ``host`` (``host[:port]``) is spoken to over plain HTTP."""
    if _is_loopback(host):
        return True
    hostname = _hostname(host)
    for entry in insecure:
        if entry in (host, hostname):
            return True
        if "/" in entry:
            try:
                network = ipaddress.ip_network(entry, strict=False)
                if ipaddress.ip_address(hostname) in network:
                    return True
            except ValueError:
                continue
    return False


class Body:
    """A streamed response body, read chunk by chunk, that never abandons httpx's generators.

    httpx streams through a chain of async generators; one left suspended when we stop early
    is finalised late by Trio's garbage-collection hook, with a ResourceWarning. So
    :meth:`aclose` closes the response and then drives the chain to its end, which comes at
    once on the closed connection.
    """

    def __init__(self, response: httpx.Response, host: str, what: str) -> None:
        self.response = response
        self._host = host
        self._what = what
        # No chunk size: the pieces come as the connection reads them (up to 64 KiB), without
        # httpx re-cutting them through a BytesIO (a copy of every byte); whoever needs
        # fixed-size pieces cuts them once (see actors.images._ingest).
        self._chunks = response.aiter_raw()
        self._started = False
        self._finished = False

    async def next(self) -> bytes:
        """The next chunk, or b"" at the end of the body."""
        if self._finished:
            return b""
        self._started = True
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self._finished = True
            return b""
        except httpx.TransportError as exc:
            self._finished = True
            raise Unavailable(
                f"{self._what}: connection to {self._host} broke mid-transfer "
                f"({type(exc).__name__})",
                local=True,
            ) from None
        except BaseException:
            self._finished = True  # an exception out of a generator finishes it
            raise

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.response.aclose()
            while self._started and not self._finished:
                try:
                    await self._chunks.__anext__()
                except Exception:
                    self._finished = True


class _RegistryError(msgspec.Struct):
    code: str = ""
    message: str = ""


class _RegistryErrors(msgspec.Struct):
    errors: list[_RegistryError] = []


def error_detail(body: bytes) -> str:
    try:
        parsed = msgspec.json.decode(body, type=_RegistryErrors)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    parts = [f"{e.code}: {e.message}" if e.message else e.code for e in parsed.errors[:3]]
    return "; ".join(p for p in parts if p)[:300]


def transport_reason(exc: httpx.TransportError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed (is it a plain-HTTP registry? list it as insecure)"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({exc})" if str(exc) else "connection failed"
    return type(exc).__name__
