"""WWW-Authenticate parsing, token requests and responses, docker's config.json, secrets."""

from __future__ import annotations

import base64
import json
import traceback
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from actors.errors import InvalidArgument, Unauthenticated
from actors.images._auth import (
    Authenticator,
    Challenge,
    Credentials,
    basic_authorization,
    merge_scopes,
    parse_token_response,
    parse_www_authenticate,
    pull_scope,
    token_request,
)
from actors.images._dockerconfig import (
    DockerConfig,
    credential_helper,
    credentials_from_mapping,
    helper_server_url,
    load_docker_config,
    lookup_credentials,
    parse_helper_response,
)

SECRET = "hunter2-very-secret"


def test_bearer_challenge() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"'
    (challenge,) = parse_www_authenticate([header])
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.params["service"] == "registry.docker.io"
    assert challenge.scopes == ["repository:library/alpine:pull"]


def test_several_challenges_escapes_and_bare_tokens() -> None:
    challenges = parse_www_authenticate(
        [
            'Basic realm="Registry \\"realm\\"", charset=UTF-8',
            'bearer realm="https://t/x?a=b", scope="repository:a:pull repository:b:pull", error="insufficient_scope"',
        ]
    )
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].realm == 'Registry "realm"'
    assert challenges[0].params["charset"] == "UTF-8"
    assert challenges[1].scopes == ["repository:a:pull", "repository:b:pull"]
    assert challenges[1].params["error"] == "insufficient_scope"
    # Two challenges in one header value.
    both = parse_www_authenticate(['Basic realm="r", Bearer realm="https://t",service="s"'])
    assert [(c.scheme, c.realm) for c in both] == [("basic", "r"), ("bearer", "https://t")]
    assert parse_www_authenticate(["", "   "]) == []


def test_scopes() -> None:
    assert pull_scope("library/alpine") == "repository:library/alpine:pull"
    assert merge_scopes(["repository:a:pull", "x"], [pull_scope("a"), ""]) == [
        "repository:a:pull",
        "x",
    ]


def test_token_request_anonymous_and_with_password() -> None:
    challenge = Challenge("bearer", {"realm": "https://auth.example/token", "service": "reg"})
    anonymous = token_request(challenge, ["repository:a/b:pull"], None)
    assert anonymous.method == "GET" and "Authorization" not in anonymous.headers
    query = parse_qs(urlsplit(anonymous.url).query)
    assert query == {"service": ["reg"], "scope": ["repository:a/b:pull"]}
    with_password = token_request(challenge, ["repository:a/b:pull"], Credentials("me", SECRET))
    expected = base64.b64encode(f"me:{SECRET}".encode()).decode()
    assert with_password.headers["Authorization"] == f"Basic {expected}"
    assert SECRET not in repr(with_password) and expected not in repr(with_password)
    # A realm that already has a query string keeps it.
    kept = token_request(Challenge("bearer", {"realm": "https://a/t?x=1"}), ["s"], None)
    assert kept.url == "https://a/t?x=1&scope=s"


def test_token_request_identity_token_is_a_refresh_grant() -> None:
    challenge = Challenge("bearer", {"realm": "https://auth.example/token", "service": "reg"})
    request = token_request(challenge, ["repository:a:pull"], Credentials(identity_token=SECRET))
    assert request.method == "POST"
    form = parse_qs(request.body.decode())
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == [SECRET]
    assert form["scope"] == ["repository:a:pull"] and form["service"] == ["reg"]


def test_token_request_refuses_unusable_realm() -> None:
    for realm in ("", "ftp://x/y", "/relative"):
        with pytest.raises(Unauthenticated, match="unusable realm"):
            token_request(Challenge("bearer", {"realm": realm}), [], None)


def test_token_response() -> None:
    assert parse_token_response(b'{"token":"t1","expires_in":300}').token == "t1"
    both = parse_token_response(b'{"token":"t1","access_token":"t2"}')
    assert both.token == "t2" and both.expires_in == 60
    with pytest.raises(Unauthenticated, match="without a token"):
        parse_token_response(b"{}")
    leaked = b'{"token": "' + SECRET.encode() + b'", "expires_in": "soon"}'
    with pytest.raises(Unauthenticated, match="malformed") as caught:
        parse_token_response(leaked)
    assert SECRET not in _rendered(caught.value)
    assert SECRET not in repr(parse_token_response(b'{"token":"' + SECRET.encode() + b'"}'))


def _rendered(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


def _write_config(tmp_path: Path, auths: dict[str, dict[str, str]]) -> DockerConfig:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths, "credsStore": "desktop"}))
    return load_docker_config(path)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_docker_config_lookup(tmp_path: Path) -> None:
    config = _write_config(
        tmp_path,
        {
            "https://index.docker.io/v1/": {"auth": _b64(f"hubuser:{SECRET}\x00\x00")},
            "registry.example:5000": {"username": "u", "password": "p"},
            "https://other.example/v2/": {"auth": _b64("o:pw:with:colons")},
            "tokens.example": {"identitytoken": "idt"},
            "empty.example": {},
        },
    )
    for host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        hub = lookup_credentials(config, host)
        assert hub is not None and (hub.username, hub.password) == ("hubuser", SECRET)
    local = lookup_credentials(config, "registry.example:5000")
    assert local == Credentials("u", "p")
    other = lookup_credentials(config, "other.example")
    assert other is not None and other.password == "pw:with:colons"
    tokens = lookup_credentials(config, "tokens.example")
    assert tokens is not None and tokens.identity_token == "idt" and not tokens.has_password
    assert lookup_credentials(config, "empty.example") is None
    assert lookup_credentials(config, "unknown.example") is None
    assert SECRET not in repr(config) and SECRET not in repr(hub)
    assert credentials_from_mapping({"https://index.docker.io/v1/": local}, "docker.io") is local


def test_docker_config_errors_never_show_secrets(tmp_path: Path) -> None:
    bad_base64 = _write_config(tmp_path, {"r.example": {"auth": SECRET + "!!"}})
    with pytest.raises(InvalidArgument, match="not valid base64") as caught:
        lookup_credentials(bad_base64, "r.example")
    assert SECRET not in _rendered(caught.value)
    no_colon = _write_config(tmp_path, {"r.example": {"auth": _b64(SECRET)}})
    with pytest.raises(InvalidArgument, match="not user:password") as caught:
        lookup_credentials(no_colon, "r.example")
    assert SECRET not in _rendered(caught.value)
    broken = tmp_path / "broken.json"
    broken.write_text('{"auths": {"r": {"auth": "' + SECRET + '"}}, "x": [}')
    with pytest.raises(InvalidArgument, match="not valid JSON") as caught:
        load_docker_config(broken)
    assert SECRET not in _rendered(caught.value)
    wrong_shape = tmp_path / "shape.json"
    wrong_shape.write_text(json.dumps({"auths": {"r": {"password": [SECRET]}}}))
    with pytest.raises(InvalidArgument) as caught:
        load_docker_config(wrong_shape)
    assert SECRET not in _rendered(caught.value)


def test_missing_docker_config_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_docker_config(tmp_path / "absent.json").auths == {}
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"h": {"username": "a", "password": "b"}}})
    )
    assert lookup_credentials(load_docker_config(), "h") == Credentials("a", "b")


def test_credentials_never_print_their_secret() -> None:
    creds = Credentials("me", SECRET, identity_token=SECRET, registry_token=SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds) and SECRET not in f"{creds}"
    assert "me" in repr(creds)
    assert basic_authorization(Credentials("a", "b")) == "Basic " + _b64("a:b")


def test_authenticator_bearer_flow_and_expiry() -> None:
    loads: list[int] = []

    def loader() -> tuple[Credentials | None, str]:
        loads.append(1)
        return Credentials("me", SECRET), ""

    auth = Authenticator("ns/app", "reg/ns/app", loader)
    assert auth.header(0.0) is None and loads == []  # nothing read until a registry asks
    plan = auth.challenged(['Bearer realm="https://t.example/token",service="svc"'])
    assert plan.token_request is not None
    assert parse_qs(urlsplit(plan.token_request.url).query)["scope"] == ["repository:ns/app:pull"]
    auth.token_response(200, b'{"token":"tok","expires_in":100}', now=1000.0)
    assert auth.header(1000.0) == "Bearer tok"
    assert auth.header(1094.0) == "Bearer tok"
    assert auth.header(1095.0) is None  # renewed 5 s before the end of its lifetime
    auth.challenged(['Bearer realm="https://t.example/token"'])
    assert loads == [1]  # credentials read once
    with pytest.raises(Unauthenticated, match="token service refused the credentials"):
        auth.token_response(401, b"", now=0.0)
    with pytest.raises(Unauthenticated, match="answered HTTP 500"):
        auth.token_response(500, b"", now=0.0)
    refused = auth.refused()
    assert "refused the credentials for me" in str(refused) and SECRET not in _rendered(refused)


def test_authenticator_basic_and_errors() -> None:
    anonymous = Authenticator("a", "reg/a", lambda: (None, "; hint"))
    with pytest.raises(Unauthenticated, match=r"requires a username and password.*; hint"):
        anonymous.challenged(['Basic realm="r"'])
    assert "requires authentication" in str(anonymous.refused())
    with pytest.raises(Unauthenticated, match="unsupported authentication scheme"):
        anonymous.challenged(['Negotiate abc="1"'])
    with pytest.raises(Unauthenticated, match="requires authentication"):
        anonymous.challenged([])
    basic = Authenticator("a", "reg/a", lambda: (Credentials("u", "p"), ""))
    assert basic.challenged(['Basic realm="r"']).token_request is None
    assert basic.header(0.0) == basic_authorization(Credentials("u", "p"))
    direct = Authenticator("a", "reg/a", lambda: (Credentials(registry_token="rt"), ""))
    assert direct.challenged(['Bearer realm="https://t"']).token_request is None
    assert direct.header(0.0) == "Bearer rt"


def test_credential_helpers() -> None:
    config = DockerConfig(
        credsStore="desktop", credHelpers={"gcr.io": "gcloud", "docker.io": "hub"}
    )
    assert credential_helper(config, "gcr.io") == "docker-credential-gcloud"
    assert credential_helper(config, "quay.io") == "docker-credential-desktop"
    assert credential_helper(config, "registry-1.docker.io") == "docker-credential-hub"
    assert credential_helper(DockerConfig(), "quay.io") is None
    for bad in ("../../bin/sh", "a b", "-x", "x" * 65):
        with pytest.raises(InvalidArgument, match="invalid credential helper name"):
            credential_helper(DockerConfig(credsStore=bad), "quay.io")
    assert helper_server_url("docker.io") == b"https://index.docker.io/v1/"
    assert helper_server_url("host:5000") == b"host:5000"
    assert parse_helper_response(b'{"ServerURL":"x","Username":"u","Secret":"s"}') == Credentials(
        "u", "s"
    )
    token = parse_helper_response(b'{"Username":"<token>","Secret":"idt"}')
    assert token == Credentials(identity_token="idt")
    assert parse_helper_response(b'{"Username":"u"}') is None
    with pytest.raises(Unauthenticated, match="malformed JSON") as caught:
        parse_helper_response(b'{"Secret": "' + SECRET.encode() + b'"')
    assert SECRET not in _rendered(caught.value)
