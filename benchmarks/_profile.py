"""Where the time goes: py-spy over our own process (all threads) and pyinstrument (Trio thread).

Both are optional: without them a run still measures everything, it only cannot name the
hot spots. Summaries keep the few functions with the most own time, which is what the
markdown quotes when a goal is missed.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import trio


class Hotspot(msgspec.Struct, frozen=True, kw_only=True):
    where: str
    share: float  # of the samples of its group


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    tool: str
    samples: int
    groups: dict[str, float]  # share of samples per thread or per Trio task
    hotspots: list[Hotspot]
    file: str | None = None


def pyspy_path() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def pyspy(out: Path, *, rate: int = 250) -> AsyncIterator[list[Profile]]:
    """Sample this process (every thread, idle excluded) while inside; yields a 1-item list
    that holds the summary afterwards (empty when py-spy is unavailable or failed)."""
    found: list[Profile] = []
    binary = pyspy_path()
    if binary is None:
        yield found
        return
    command = [binary, "record", "--pid", str(os.getpid()), "--rate", str(rate)]
    command += ["--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await trio.sleep(0.5)  # let it attach
        yield found
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(2)  # SIGINT: py-spy writes its output and exits
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
    if await trio.Path(out).exists():
        found.append(summarize_pyspy(out))


# Frames that mean "waiting": py-spy's idle detection misses some of them.
_WAITING = (
    "EpollIOManager.get_events",
    "EpollSelector.select",
    "Condition.wait",
    "Event.wait",
    "Thread.join",
    "_worker (",
)


def summarize_pyspy(path: Path, *, top: int = 12) -> Profile:
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        if frames[-1].startswith(_WAITING):
            continue
        total += n
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        threads[thread] += n
        own[_short(frames[-1])] += n
    return Profile(
        tool="py-spy",
        samples=total,
        groups={k: v / total for k, v in threads.most_common()} if total else {},
        hotspots=[Hotspot(where=k, share=v / total) for k, v in own.most_common(top)]
        if total
        else [],
        file=path.name,
    )


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, location = frame.partition(" (")
    module = location.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({module})" if module else name


@contextlib.contextmanager
def pyinstrument(out: Path | None) -> Iterator[list[Profile]]:
    """Profile the Trio thread while inside (pyinstrument samples the calling thread only)."""
    found: list[Profile] = []
    try:
        module: Any = importlib.import_module("pyinstrument")
    except ImportError:
        yield found
        return
    profiler = module.Profiler(async_mode="disabled", interval=0.001)
    profiler.start()
    try:
        yield found
    finally:
        session = profiler.stop()
        if out is not None:
            out.write_text(profiler.output_text(unicode=False, color=False))
        found.append(_summarize_pyinstrument(session, out))


def _label(frame: Any) -> str:
    return f"{frame.function} ({Path(frame.file_path or '').name})"


def _is_ours(frame: Any) -> bool:
    path = frame.file_path or ""
    return "/actors/" in path or "/benchmarks/" in path


def _summarize_pyinstrument(session: Any, out: Path | None, *, top: int = 12) -> Profile:
    root = session.root_frame()
    total = root.time if root is not None else 0.0
    groups: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    if root is not None and total > 0:
        # A Trio task shows up as the first frame of our code under the run loop; what is
        # above it is the scheduler, which gets its own group.
        stack: list[tuple[Any, str | None]] = [(root, None)]
        while stack:
            frame, group = stack.pop()
            if group is None and _is_ours(frame):
                group = _label(frame)
            if frame.is_synthetic:
                continue  # "[self]" and friends: counted in their parent's own time
            real_children = [c for c in frame.children if not c.is_synthetic]
            own_time = frame.time - sum(c.time for c in real_children)
            if own_time > 0:
                groups[group or "Trio scheduler and I/O"] += own_time
                own[_label(frame)] += own_time
            stack.extend((child, group) for child in real_children)
    return Profile(
        tool="pyinstrument",
        samples=int(total / 0.001) if total else 0,
        groups={k: v / total for k, v in groups.most_common()} if total else {},
        hotspots=[Hotspot(where=k, share=v / total) for k, v in own.most_common(top)]
        if total
        else [],
        file=out.name if out is not None else None,
    )
