"""Registry authentication, sans-IO: challenges, token requests and answers, credentials.

- :func:`parse_www_authenticate` reads ``WWW-Authenticate`` headers (``Bearer realm=...,
  service=..., scope=...`` and ``Basic realm=...``; several challenges in one header).
- :func:`token_request` builds the token endpoint request of the distribution token spec
  (``GET realm?service=S&scope=A&scope=B``, HTTP Basic when we hold a username and password,
  or a ``POST`` refresh-token grant for an identity token); :func:`parse_token_response` reads
  ``token``/``access_token`` and ``expires_in``.
- :class:`Authenticator` is the whole flow for one repository: the header to send, what a
  401 asks for (:class:`AuthPlan`: a token request, or just retry), the token answer, and the
  error once a registry still refuses; tokens are dropped 5 s before ``expires_in`` runs out.
- :func:`pull_scope` is ``repository:NAME:pull``; :func:`merge_scopes` joins the challenge's
  scopes with ours, sorted and de-duplicated like containerd.
- docker's ``config.json`` and credential helpers live in :mod:`._dockerconfig`.

Secrets never appear in ``repr``, ``str`` or any error message: :class:`Credentials` redacts
itself, and no error quotes a token, a password or a token endpoint's answer.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlencode, urlsplit

import msgspec

from ..errors import Unauthenticated

__all__ = [
    "AuthPlan",
    "Authenticator",
    "Challenge",
    "Credentials",
    "HttpRequest",
    "Token",
    "basic_authorization",
    "merge_scopes",
    "parse_token_response",
    "parse_www_authenticate",
    "pull_scope",
    "token_request",
]

# Tokens without expires_in live 60 s (token spec).
DEFAULT_TOKEN_LIFETIME = 60


class Credentials:
    """A username and secret for one registry. Plain class (not a Struct): it must never
    print its secret, and a Struct's generated repr would."""

    __slots__ = ("identity_token", "password", "registry_token", "username")

    def __init__(
        self,
        username: str = "",
        password: str = "",
        *,
        identity_token: str = "",
        registry_token: str = "",
    ) -> None:
        self.username = username
        self.password = password
        self.identity_token = identity_token
        self.registry_token = registry_token

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secret=<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return (self.username, self.password, self.identity_token, self.registry_token) == (
            other.username,
            other.password,
            other.identity_token,
            other.registry_token,
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def has_password(self) -> bool:
        return bool(self.username and self.password)


class Challenge(msgspec.Struct, frozen=True):
    scheme: str  # lowercased: "bearer", "basic"
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def scopes(self) -> list[str]:
        scope = self.params.get("scope", "")
        return scope.split(" ") if scope else []


class HttpRequest(msgspec.Struct, frozen=True):
    """A request for the shell to send (sans-IO). ``headers`` may hold a secret: never log."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes = b""

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.url.split('?', 1)[0]})"


class Token(msgspec.Struct, frozen=True):
    token: str
    expires_in: int = DEFAULT_TOKEN_LIFETIME

    def __repr__(self) -> str:
        return f"Token(<redacted>, expires_in={self.expires_in})"


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME_RE = re.compile(rf"\s*,?\s*({_TOKEN})(?:\s+|$)")
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*(,)?')


def parse_www_authenticate(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given ``WWW-Authenticate`` header values, in order."""
    out: list[Challenge] = []
    for header in headers:
        pos = 0
        while pos < len(header):
            scheme = _SCHEME_RE.match(header, pos)
            if scheme is None:
                break
            pos = scheme.end()
            params: dict[str, str] = {}
            while True:
                param = _PARAM_RE.match(header, pos)
                if param is None:
                    break
                key, quoted, bare, comma = param.groups()
                value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
                params[key.lower()] = value
                pos = param.end()
                if comma is None:
                    break
            out.append(Challenge(scheme=scheme.group(1).lower(), params=params))
    return out


def pull_scope(repository: str, actions: str = "pull") -> str:
    return f"repository:{repository}:{actions}"


def merge_scopes(*groups: Iterable[str]) -> list[str]:
    return sorted({scope for group in groups for scope in group if scope})


def basic_authorization(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def token_request(
    challenge: Challenge, scopes: Iterable[str], credentials: Credentials | None
) -> HttpRequest:
    """The token endpoint request answering a Bearer ``challenge``."""
    realm = challenge.realm
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Unauthenticated(
            f"registry sent a Bearer challenge with an unusable realm {realm[:200]!r}",
            local=True,
        )
    query: list[tuple[str, str]] = []
    if challenge.params.get("service"):
        query.append(("service", challenge.params["service"]))
    query += [("scope", scope) for scope in scopes]
    if credentials is not None and credentials.identity_token:
        # docker's OAuth flow: an identity token is a refresh token for the POST grant.
        form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", credentials.identity_token),
            ("client_id", "containerd-actors"),
            *query,
        ]
        return HttpRequest(
            method="POST",
            url=realm,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=urlencode(form).encode(),
        )
    headers: dict[str, str] = {}
    if credentials is not None and credentials.has_password:
        headers["Authorization"] = basic_authorization(credentials)
    separator = "&" if parts.query else "?"
    url = realm + (separator + urlencode(query) if query else "")
    return HttpRequest(method="GET", url=url, headers=headers)


class _TokenBody(msgspec.Struct):
    token: str = ""
    access_token: str = ""
    expires_in: int = 0


def parse_token_response(body: bytes) -> Token:
    """The token from a token endpoint's JSON answer (``access_token`` preferred)."""
    try:
        parsed = msgspec.json.decode(body, type=_TokenBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        # Never quote the body: it may hold a token.
        raise Unauthenticated("token endpoint answered with malformed JSON", local=True) from None
    token = parsed.access_token or parsed.token
    if not token:
        raise Unauthenticated("token endpoint answered without a token", local=True)
    lifetime = parsed.expires_in if parsed.expires_in > 0 else DEFAULT_TOKEN_LIFETIME
    return Token(token=token, expires_in=lifetime)


class AuthPlan(msgspec.Struct, frozen=True):
    """What to do after a 401: fetch ``token_request`` first (then call
    :meth:`Authenticator.token_response`), or simply retry with the new header."""

    token_request: HttpRequest | None = None


class Authenticator:
    """Sans-IO: the ``Authorization`` header for one repository, and the answer to a 401.

    ``credentials`` is called at most once, on the first challenge, so a registry that never
    asks never makes us read docker's config file. It returns the credentials (or None) and
    a hint to append to "requires authentication" errors. ``now`` is any monotonic clock.
    """

    def __init__(
        self,
        repository: str,
        where: str,
        credentials: Callable[[], tuple[Credentials | None, str]],
    ) -> None:
        self._repository = repository
        self._where = where
        self._loader = credentials
        self._credentials: Credentials | None = None
        self._hint = ""
        self._loaded = False
        self._header: str | None = None
        self._expires = float("inf")

    def header(self, now: float) -> str | None:
        """The header to send now (a token past its lifetime is dropped)."""
        if self._header is not None and now >= self._expires:
            self._header = None
        return self._header

    def _load(self) -> Credentials | None:
        if not self._loaded:
            self._credentials, self._hint = self._loader()
            self._loaded = True
        return self._credentials

    def challenged(self, header_values: Iterable[str]) -> AuthPlan:
        """React to a 401 carrying these ``WWW-Authenticate`` values."""
        challenges = {c.scheme: c for c in parse_www_authenticate(header_values)}
        if not challenges:
            raise self.refused()
        credentials = self._load()
        bearer = challenges.get("bearer")
        if bearer is not None:
            if credentials is not None and credentials.registry_token:
                self._set(f"Bearer {credentials.registry_token}", None, 0.0)
                return AuthPlan()
            scopes = merge_scopes(bearer.scopes, [pull_scope(self._repository)])
            return AuthPlan(token_request=token_request(bearer, scopes, credentials))
        if "basic" in challenges:
            if credentials is None or not credentials.has_password:
                raise Unauthenticated(
                    f"{self._where}: the registry requires a username and password "
                    f"(docker login, or pass credentials){self._hint}",
                    local=True,
                )
            self._set(basic_authorization(credentials), None, 0.0)
            return AuthPlan()
        schemes = ", ".join(sorted(challenges))
        raise Unauthenticated(
            f"{self._where}: unsupported authentication scheme(s): {schemes}", local=True
        )

    def token_response(self, status: int, body: bytes, now: float) -> None:
        """Take the token endpoint's answer (raises when it refused)."""
        if status >= 400:
            who = "the credentials" if self._credentials is not None else "anonymous access"
            if status in (401, 403):
                raise Unauthenticated(f"{self._where}: the token service refused {who}", local=True)
            raise Unauthenticated(
                f"{self._where}: the token service answered HTTP {status}", local=True
            )
        token = parse_token_response(body)
        self._set(f"Bearer {token.token}", token.expires_in, now)

    def refused(self) -> Unauthenticated:
        """The error for a request still refused after authenticating."""
        if self._credentials is not None:
            who = self._credentials.username or "the token"
            return Unauthenticated(
                f"{self._where}: the registry refused the credentials for {who}", local=True
            )
        return Unauthenticated(
            f"{self._where}: the registry requires authentication (docker login, or pass "
            f"credentials){self._hint}",
            local=True,
        )

    def _set(self, header: str, lifetime: int | None, now: float) -> None:
        self._header = header
        # Renew a little early so a token does not expire between check and use.
        self._expires = float("inf") if lifetime is None else now + max(lifetime - 5, 1)
