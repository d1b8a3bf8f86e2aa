"""Fault-suite harness: leak probes and a report of what was injected and what held.

The report of the last run is written to $FAULT_REPORT (default: not written) as JSON, so
docs/RELIABILITY.md can quote real figures: `FAULT_REPORT=/tmp/faults.json make test`.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest
import trio

from ..helpers import leftovers as leftovers


class FaultReport:
    def __init__(self) -> None:
        self.injections: collections.Counter[str] = collections.Counter()
        self.figures: dict[str, int | float] = {}
        self.cases: dict[str, str] = {}

    def injection(self, what: str) -> None:
        self.injections[what] += 1

    def count(self, what: str, value: int | float) -> None:
        self.figures[what] = value


_REPORT = FaultReport()


@pytest.fixture
def fault_report() -> FaultReport:
    return _REPORT


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "tests/faults/" in report.nodeid:
        _REPORT.cases[report.nodeid.split("::")[-1]] = report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("FAULT_REPORT")
    if not target or not _REPORT.cases:
        return
    Path(target).write_text(
        json.dumps(
            {
                "cases": _REPORT.cases,
                "injections": dict(_REPORT.injections),
                "figures": _REPORT.figures,
            },
            indent=2,
            sort_keys=True,
        )
    )


def trio_task_count() -> int:
    """Every Trio task alive in this run (walks the task tree from the root)."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
