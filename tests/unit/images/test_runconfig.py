"""Docker's merge rules for an image config plus a request (actors.images._runconfig)."""

from __future__ import annotations

import pytest

from actors.errors import InvalidArgument
from actors.images._media import ContainerConfig
from actors.images._runconfig import DEFAULT_PATH_ENV, merge_run_config, parse_user

IMAGE = ContainerConfig(
    entrypoint=["/bin/sh", "-c"],
    cmd=["echo hi"],
    env=["A=1", "PATH=/image/bin"],
    working_dir="/work",
    user="7:8",
    stop_signal="SIGINT",
)


def test_image_defaults() -> None:
    run = merge_run_config(IMAGE)
    assert run.args == ["/bin/sh", "-c", "echo hi"]
    assert run.env == ["A=1", "PATH=/image/bin"]
    assert (run.cwd, run.user, run.stop_signal) == ("/work", (7, 8), "SIGINT")


def test_args_replace_cmd_and_keep_the_entrypoint() -> None:
    assert merge_run_config(IMAGE, args=["date"]).args == ["/bin/sh", "-c", "date"]


def test_entrypoint_drops_the_image_cmd() -> None:
    assert merge_run_config(IMAGE, entrypoint=["/bin/echo"]).args == ["/bin/echo"]
    assert merge_run_config(IMAGE, entrypoint=["/bin/echo"], args=["x"]).args == ["/bin/echo", "x"]


def test_empty_entrypoint_clears_it() -> None:
    assert merge_run_config(IMAGE, entrypoint=[""], args=["ls"]).args == ["ls"]
    with pytest.raises(InvalidArgument, match="no command"):
        merge_run_config(IMAGE, entrypoint=[""])


def test_nothing_to_run() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        merge_run_config(ContainerConfig())
    assert merge_run_config(None, args=["true"]).args == ["true"]


def test_env_request_wins_by_key_and_path_is_defaulted() -> None:
    run = merge_run_config(IMAGE, env=["A=2", "B=3"])
    assert run.env == ["A=2", "B=3", "PATH=/image/bin"]
    assert merge_run_config(ContainerConfig(cmd=["x"])).env == [DEFAULT_PATH_ENV]


def test_cwd_and_user_overrides() -> None:
    run = merge_run_config(IMAGE, cwd="/tmp", user="0")
    assert (run.cwd, run.user) == ("/tmp", (0, 0))
    assert merge_run_config(ContainerConfig(cmd=["x"], working_dir="rel")).cwd == "/rel"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (0, 0)),
        ("root", (0, 0)),
        ("1000", (1000, 0)),
        ("1000:50", (1000, 50)),
        ("root:5", (0, 5)),
    ],
)
def test_parse_user(text: str, expected: tuple[int, int]) -> None:
    assert parse_user(text) == expected


@pytest.mark.parametrize("text", ["nobody", "1000:staff", "-1", "99999999999"])
def test_user_names_and_bad_ids_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_user(text)
