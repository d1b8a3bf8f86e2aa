"""The README's usage example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import _require_host

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.integration
def test_readme_python_example_runs_as_written() -> None:
    _require_host()
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "README.md has a python example"
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "b'hello\\n'"
    assert lines[1].startswith("3 {")
    assert "'Containers.Create': 1" in lines[1]


@pytest.mark.integration
def test_readme_images_example_runs_as_written() -> None:
    _require_host()
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) >= 2, "README.md has an images example"
    result = subprocess.run(
        [sys.executable, "-c", blocks[1]], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["b'hi\\n'", "7"]
    assert "docker.io/library/busybox:latest" in lines[2]
