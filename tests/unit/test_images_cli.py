"""The CLI's image verbs: parsing, run's params, progress rendering (no server)."""

from __future__ import annotations

import io
from typing import Any

from actors.control._cli import _create_params, build_parser
from actors.control._images_cli import _Progress, pull_params


def parse(*argv: str) -> Any:
    args = build_parser().parse_args(list(argv))
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    return args


def test_run_with_an_image_leaves_the_command_to_the_image() -> None:
    params = _create_params(parse("run", "alpine:3.20"), "c1")
    assert params == {"id": "c1", "terminal": False, "image": "alpine:3.20"}
    params = _create_params(parse("run", "--entrypoint", "/bin/echo", "busybox", "hi"), "c1")
    assert (params["image"], params["entrypoint"], params["args"]) == (
        "busybox",
        ["/bin/echo"],
        ["hi"],
    )
    params = _create_params(parse("run", "--entrypoint", "", "busybox", "ls"), "c1")
    assert params["entrypoint"] == [""]


def test_run_with_a_directory_is_a_rootfs() -> None:
    params = _create_params(parse("run", "/srv/roots/app", "--", "true"), "c1")
    assert params["rootfs"] == "/srv/roots/app" and "image" not in params
    assert params["args"] == ["true"]


def test_image_verbs_parse() -> None:
    assert parse("pull", "busybox").image == "busybox"
    assert parse("images", "--format", "json").format == "json"
    assert parse("rmi", "a", "b").images == ["a", "b"]
    assert parse("load", "-i", "x.tar").input == "x.tar"
    args = parse("save", "-o", "x.tar", "a", "b")
    assert (args.output, args.images) == ("x.tar", ["a", "b"])
    serve = parse("serve", "--insecure-registry", "reg:5000", "--insecure-registry", "10.0.0.0/8")
    assert serve.insecure_registry == ["reg:5000", "10.0.0.0/8"]


def test_pull_sends_no_credentials_without_a_docker_config(monkeypatch: Any) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")
    assert pull_params("localhost:5000/app:1") == {"reference": "localhost:5000/app:1"}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def layer(index: int, state: str, done: int = 0, total: int = 100) -> dict[str, Any]:
    return {"index": index, "digest": "sha256:" + "ab" * 32, "state": state, "done": done,
            "total": total}  # fmt: skip


def test_plain_progress_prints_one_line_per_state_change() -> None:
    out = io.StringIO()
    progress = _Progress(out)
    for update in (layer(0, "waiting"), layer(0, "downloading", 10), layer(0, "downloading", 50),
                   layer(0, "extracting", 100), layer(0, "done", 100)):  # fmt: skip
        progress.update(update)
    lines = out.getvalue().splitlines()
    assert lines == [
        "abababababab: Waiting",
        "abababababab: Downloading",
        "abababababab: Extracting",
        "abababababab: Pull complete",
    ]


def test_terminal_progress_redraws_bars_in_place() -> None:
    out = Tty()
    progress = _Progress(out)
    progress.update(layer(0, "downloading", 50, 100))
    progress.update(layer(1, "waiting"))
    progress.update(layer(0, "downloading", 100, 100))
    text = out.getvalue()
    assert "\x1b[2A" in text  # moved up over the two layer lines
    assert "[===" in text and "100B/100B" in text
