"""What the machine is and what each process spent: CPU per process and thread, memory, load.

Everything is read from /proc, so a measurement costs a few file reads and no sampling
thread: the benchmarks must not disturb what they measure (idle CPU in particular).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec

_TICK = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size (VmRSS) of a process; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _stat_cpu(path: str) -> float:
    """CPU seconds of one thread from its /proc entry ``path`` (a .../stat file)."""
    try:
        # Nanoseconds on the CPU; /proc/.../stat counts 10 ms ticks, too coarse per lifecycle.
        return int(Path(path[: -len("stat")] + "schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    text = Path(path).read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) all threads of a process have used; 0 when it is gone."""
    try:
        # Not schedstat: for a process it counts the thread-group leader only, and Go's
        # leader thread is mostly idle.
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0


def thread_cpu() -> dict[int, float]:
    """CPU seconds per thread id of this process.

    The main thread runs Trio (the actors, the router, protobuf decoding); the others are the
    bridges' asyncio threads (grpclib and h2) and Trio's worker threads, so the split shows
    where a client's CPU goes.
    """
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            found[int(tid)] = _stat_cpu(f"/proc/self/task/{tid}/stat")
        except (OSError, ValueError, IndexError):
            continue
    return found


def wakeups() -> dict[int, int]:
    """Times each thread of this process went to sleep so far (voluntary context switches).

    Idle CPU on a VM is blurred by whatever the host charges a thread when it wakes; the
    number of wakeups is the direct evidence that nothing polls.
    """
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    found[int(tid)] = int(line.split()[1])
        except (OSError, ValueError):
            continue
    return found


def wakeups_since(before: dict[int, int]) -> int:
    """Wakeups of the threads alive now since ``before`` (a thread that ended takes its
    count along; one that started counts from zero)."""
    return sum(n - before.get(tid, 0) for tid, n in wakeups().items())


_FLOOR_PROBE = (
    "import select\n"
    "def ran():\n"
    "    return int(open('/proc/self/schedstat').read().split()[0])\n"
    "poller = select.epoll()\n"
    "before = ran()\n"
    "poller.poll(1.0)\n"
    "print((ran() - before) / 1e6)\n"
)


async def wakeup_floor_ms() -> float:
    """CPU a minimal Python process is charged for sleeping 1 s in epoll and waking once.

    The machine's accounting floor for an idle process: a VM host may bill a thread for
    more than it ran. NaN when it cannot be measured.
    """
    import trio

    try:
        result = await trio.run_process(
            [sys.executable, "-c", _FLOOR_PROBE], capture_stdout=True, check=False
        )
        return float(result.stdout.decode().strip())
    except (OSError, ValueError):
        return float("nan")


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / _TICK, total / _TICK


class CpuSample(msgspec.Struct, frozen=True, kw_only=True):
    wall: float
    process: float
    threads: dict[int, float]
    children: float
    daemon: float
    machine_busy: float


class CpuDelta(msgspec.Struct, frozen=True, kw_only=True):
    """CPU seconds spent between two samples (``machine_busy`` is summed over all cores)."""

    wall: float
    process: float
    main_thread: float
    other_threads: float
    children: float
    daemon: float
    machine_busy: float


def sample(daemon_pid: int | None = None) -> CpuSample:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, _ = system_cpu()
    return CpuSample(
        wall=time.perf_counter(),
        process=time.process_time(),
        threads=thread_cpu(),
        children=children.ru_utime + children.ru_stime,
        daemon=process_cpu(daemon_pid) if daemon_pid else 0.0,
        machine_busy=busy,
    )


def delta(before: CpuSample, after: CpuSample) -> CpuDelta:
    # Per thread id: worker threads come and go, and a thread that ended takes its counter
    # with it (its share stays in ``process``, which is why that is the headline figure).
    me = os.getpid()
    spent = {tid: cpu - before.threads.get(tid, 0.0) for tid, cpu in after.threads.items()}
    return CpuDelta(
        wall=after.wall - before.wall,
        process=after.process - before.process,
        main_thread=spent.get(me, 0.0),
        other_threads=sum(cpu for tid, cpu in spent.items() if tid != me),
        children=after.children - before.children,
        daemon=after.daemon - before.daemon,
        machine_busy=after.machine_busy - before.machine_busy,
    )


async def background_cores(seconds: float = 3.0) -> float:
    """How many cores the rest of the machine keeps busy while we sit idle.

    Sampled before the real-daemon phases, so machine CPU per lifecycle can be corrected for
    other users of a shared machine (an estimate: their load is not constant).
    """
    import trio

    busy0, _ = system_cpu()
    began = time.perf_counter()
    await trio.sleep(seconds)
    busy1, _ = system_cpu()
    return (busy1 - busy0) / (time.perf_counter() - began)


def _first_line(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine() -> dict[str, object]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "kernel": platform.release(),
        "os": _os_release(),
        "cgroup": cgroup,
        "python": sys.version.split()[0],
        "loadavg_at_start": os.getloadavg(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def versions() -> dict[str, str]:
    found = {
        "containerd (binary)": _first_line(["containerd", "--version"]),
        "ctr": _first_line(["ctr", "--version"]),
        "runc": _first_line(["runc", "--version"]),
    }
    for package in (
        "containerd-actors",
        "trio",
        "grpclib",
        "h2",
        "protobuf",
        "msgspec",
        "matplotlib",
        "pyinstrument",
    ):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def raise_open_files_limit() -> int:
    """Lift the soft fd limit to the hard one (10,000 actors hold 10,000 FIFO fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
