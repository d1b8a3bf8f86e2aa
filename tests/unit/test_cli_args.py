"""The command line's flag parsers and docker-style presentation (no daemon)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from actors.control._cliargs import (
    DetachScanner,
    parse_bytes,
    parse_detach_keys,
    parse_time,
    parse_user,
    resolve_env,
    user_param,
    validate_name,
    validate_workdir,
)
from actors.control._clibase import format_template, human_duration, status_text
from actors.control.gateway_client import GatewayError
from actors.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64m", 64 << 20), ("1g", 1 << 30), ("512K", 512 << 10), ("1.5GiB", 3 << 29), ("4096", 4096),
     ("10mb", 10 << 20)],
)  # fmt: skip
def test_memory_sizes_like_docker(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "-1m", "0", "1x"])
def test_bad_memory_sizes_name_the_flag(text: str) -> None:
    with pytest.raises(InvalidArgument, match="--memory"):
        parse_bytes(text)


def test_env_copies_from_the_caller_and_drops_unset(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nA=file\nB\n")
    environ = {"B": "from-b", "C": "from-c"}
    got = resolve_env(["C", "D", "E=x=y"], [str(env_file)], environ)
    assert got == ["A=file", "B=from-b", "C=from-c", "E=x=y"]
    with pytest.raises(InvalidArgument, match="--env-file"):
        resolve_env([], [str(tmp_path / "missing")], environ)
    with pytest.raises(InvalidArgument, match="'=oops'"):
        resolve_env(["=oops"], [], environ)


def test_users_names_and_workdirs() -> None:
    assert parse_user("1000") == (1000, 1000)
    assert parse_user("1000:5") == (1000, 5)
    assert parse_user("root") == (0, 0)
    with pytest.raises(InvalidArgument, match="must be a number"):
        parse_user("nobody")
    # run/create: names go to the server, which resolves them in the image.
    assert user_param("1000:5") == {"uid": 1000, "gid": 5}
    assert user_param("app") == "app"
    assert user_param("www-data:www-data") == "www-data:www-data"
    assert user_param("1000:staff") == "1000:staff"
    with pytest.raises(InvalidArgument, match="USER"):
        user_param(":staff")
    assert validate_name("web-1") == "web-1"
    with pytest.raises(InvalidArgument, match=r"Invalid container name \(bad name!\)"):
        validate_name("bad name!")
    with pytest.raises(InvalidArgument, match="needs to be an absolute path"):
        validate_workdir("relative")


def test_times_for_since_and_until() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    base = int(now.timestamp()) * 10**9
    assert parse_time("10m", flag="--since", now=now) == base - 600 * 10**9
    assert parse_time("2026-01-02T03:04:05Z", flag="--since", now=now) == base
    assert parse_time("1767323045", flag="--since", now=now) == base
    with pytest.raises(InvalidArgument, match="--until"):
        parse_time("yesterday", flag="--until", now=now)


def test_detach_keys_are_found_across_chunks_and_partial_matches_released() -> None:
    keys = parse_detach_keys("ctrl-p,ctrl-q")
    assert keys == b"\x10\x11"
    scanner = DetachScanner(keys)
    assert scanner.feed(b"ab\x10") == (b"ab", False)
    assert scanner.feed(b"c") == (b"\x10c", False)  # not the sequence: released
    assert scanner.feed(b"\x10\x10") == (b"\x10", False)
    assert scanner.feed(b"\x11rest") == (b"", True)
    assert parse_detach_keys("ctrl-a,a") == b"\x01a"
    with pytest.raises(InvalidArgument):
        parse_detach_keys("ctrl-pq")


def test_docker_presentation() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert human_duration(0.5) == "Less than a second"
    assert human_duration(150) == "2 minutes"
    assert human_duration(3 * 3600) == "3 hours"
    exited = {
        "task": {"status": "stopped", "exit": {"code": 5, "exited_at": "2026-01-02T03:02:05Z"}}
    }
    assert status_text(exited, now) == "Exited (5) 2 minutes ago"
    running = {"task": {"status": "running"}, "started": "2026-01-02T03:01:05Z"}
    assert status_text(running, now) == "Up 3 minutes"
    paused = {"task": {"status": "paused"}, "started": "2026-01-02T03:01:05Z"}
    assert status_text(paused, now) == "Up 3 minutes (Paused)"
    assert status_text({"task": None}, now) == "Created"
    value = {"State": {"ExitCode": 3, "Running": False}, "Config": {"Env": ["A=1"]}}
    assert format_template("{{.State.ExitCode}} {{.State.Running}}", value) == "3 false"
    assert format_template("{{json .Config.Env}}", value) == '["A=1"]'


def test_gateway_errors_carry_the_field_and_reason() -> None:
    error = GatewayError(-32602, "Invalid params", {"path": "$.params.env[0]", "reason": "bad"})
    assert str(error) == "Invalid params: env[0]: bad (-32602)"
    assert str(GatewayError(-32601, "Method not found", {"method": "x.y"})) == (
        "Method not found: x.y (-32601)"
    )


def test_a_bad_restart_policy_is_named_in_the_error() -> None:
    from actors.control._protocol import ErrorResponse, decode_request

    decoded = decode_request(
        '{"jsonrpc":"2.0","id":1,"method":"container.create",'
        '"params":{"id":"a","args":["true"],"restart":"sometimes"}}'
    )
    assert isinstance(decoded, ErrorResponse)
    assert decoded.data is not None
    assert decoded.data["path"] == "$.params.restart"
    assert "on-failure[:N]" in decoded.data["reason"]


def test_cp_refuses_an_archive_that_leaves_the_destination(tmp_path: Path) -> None:
    import io
    import tarfile

    from actors.control._cliverbs import _extract

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        data = b"owned\n"
        member = tarfile.TarInfo("../escaped")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    buffer.seek(0)
    target = tmp_path / "inside"
    target.mkdir()
    with pytest.raises(InvalidArgument, match="cannot copy"):
        _extract(buffer, "escaped", target)
    assert not (tmp_path / "escaped").exists()
