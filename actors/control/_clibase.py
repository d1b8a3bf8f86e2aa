"""What every client verb of the command line shares: messages, exit codes, the connection,
and docker's ways of showing times, states and JSON."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from ..containerd._paths import default_state_root
from .gateway_client import GatewayClient, GatewayError, connect_gateway

if TYPE_CHECKING:
    import argparse

EXIT_DAEMON_ERROR: Final = 125
EXIT_CANNOT_INVOKE: Final = 126
EXIT_NOT_FOUND: Final = 127
# docker's code for a failed client stream: the server went away, or output was dropped.
EXIT_STREAM_FAILED: Final = 1
json_encoder: Final = msgspec.json.Encoder()


def say(message: str) -> None:
    print(f"containerd-actors: {message}", file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    print(json_encoder.encode(value).decode(), flush=True)


@contextlib.asynccontextmanager
async def open_gateway(args: argparse.Namespace) -> AsyncIterator[GatewayClient]:
    """The control-plane connection the global flags describe, with messages that say how
    to fix what failed."""
    state_root = Path(args.state_dir) if args.state_dir else default_state_root()
    token = os.environ.get("CONTAINERD_ACTORS_TOKEN")
    if not token:
        token_file = Path(args.token_file) if args.token_file else state_root / "token"
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise GatewayError(
                -32000,
                f"cannot read the token file {token_file} ({exc.strerror}); "
                "is `containerd-actors serve` running? (or set CONTAINERD_ACTORS_TOKEN)",
            ) from None
    try:
        async with connect_gateway(args.url, token, connect_timeout=args.timeout) as gateway:
            yield gateway
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        raise GatewayError(
            -32000,
            f"cannot reach the control plane at {args.url} ({cause or exc}); "
            "start it with `containerd-actors serve`",
        ) from None


# -- docker's presentation ------------------------------------------------------------------


def parse_rfc3339(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    with contextlib.suppress(ValueError):
        # Python 3.11 reads at most microseconds: drop extra fraction digits.
        trimmed = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
        when = dt.datetime.fromisoformat(trimmed)
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return None


def human_duration(seconds: float) -> str:
    """go-units' HumanDuration, which docker's ``ps`` uses ("Up 3 minutes")."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    minutes, hours = seconds / 60, seconds / 3600
    if minutes < 1:
        return f"{int(seconds)} seconds"
    if minutes < 2:
        return "About a minute"
    if hours < 1:
        return f"{int(minutes)} minutes"
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    if hours < 24 * 7 * 2:
        return f"{int(hours / 24)} days"
    if hours < 24 * 30 * 2:
        return f"{int(hours / 24 / 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{int(hours / 24 / 30)} months"
    return f"{int(hours / 24 / 365)} years"


def ago(text: str | None, now: dt.datetime) -> str:
    when = parse_rfc3339(text)
    if when is None:
        return ""
    return f"{human_duration((now - when).total_seconds())} ago"


def docker_state(info: dict[str, Any]) -> str:
    """Docker's state word: created, running, paused or exited."""
    task = info.get("task") or {}
    status = task.get("status")
    if status in ("running", "paused", "pausing"):
        return "paused" if status != "running" else "running"
    if status == "stopped":
        return "exited"
    return "created"


def status_text(info: dict[str, Any], now: dt.datetime) -> str:
    """``ps``'s STATUS column: ``Up 3 minutes``, ``Exited (5) 2 minutes ago``, ``Created``."""
    task = info.get("task") or {}
    state = docker_state(info)
    if state == "exited":
        exit_ = task.get("exit") or {}
        code = exit_.get("code", "")
        when = ago(exit_.get("exited_at"), now)
        return f"Exited ({code}) {when}".rstrip()
    if state in ("running", "paused"):
        started = parse_rfc3339(info.get("started"))
        up = f"Up {human_duration((now - started).total_seconds())}" if started else "Up"
        return f"{up} (Paused)" if state == "paused" else up
    return "Created"


def format_template(template: str, value: Any) -> str:
    """Docker's ``--format`` Go templates, for the common forms: ``{{.A.B}}`` and
    ``{{json .A}}`` (anything else is printed as written)."""

    def lookup(path: str) -> Any:
        current = value
        for part in path.strip(".").split(".") if path.strip(".") else []:
            current = current.get(part) if isinstance(current, dict) else None
        return current

    def render(match: re.Match[str]) -> str:
        is_json, path = match[1], match[2]
        found = lookup(path)
        if is_json:
            return json_encoder.encode(found).decode()
        if isinstance(found, bool):
            return "true" if found else "false"
        if found is None:
            return "<no value>"
        if isinstance(found, dict | list):
            return json_encoder.encode(found).decode()
        return str(found)

    return re.sub(r"\{\{\s*(json\s+)?(\.[A-Za-z0-9_.]*)\s*\}\}", render, template)
