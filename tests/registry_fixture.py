"""Real registries for tests: Debian's ``docker-registry`` (distribution 2.8) on loopback.

A pytest plugin module: import its fixtures into a conftest (``from
tests.registry_fixture import registry, auth_registry``) or list it in ``pytest_plugins``.

- ``registry``: anonymous, plain HTTP on ``127.0.0.1:<free port>``, its own storage
  directory and config file, deletes enabled; session-scoped.
- ``auth_registry``: the same with htpasswd Basic auth (user ``tester``, a random password);
  the entry is made by Debian's ``htpasswd -B`` (bcrypt, the only hash distribution accepts).

Without ``docker-registry`` (or ``skopeo``/``htpasswd`` for the fixtures that need them) the
tests are skipped locally and fail with ``CI=true``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["LocalRegistry", "auth_registry", "registry", "require_tools"]


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    message = (
        f"registry tests need {', '.join(missing)} "
        "(apt-get install docker-registry skopeo apache2-utils, or `make setup`)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class LocalRegistry:
    host: str  # "127.0.0.1:PORT"
    storage: Path
    process: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    def blob_path(self, digest: str) -> Path:
        """Where distribution keeps a blob's bytes (to corrupt it in a test)."""
        hex_digest = digest.split(":", 1)[1]
        return (
            self.storage
            / "docker"
            / "registry"
            / "v2"
            / "blobs"
            / "sha256"
            / hex_digest[:2]
            / hex_digest
            / "data"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(storage: Path, port: int, htpasswd: Path | None) -> str:
    auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n" if htpasswd else ""
    return (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n" + auth
    )


def _wait_ready(host: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{host}/v2/", timeout=1):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # up, and asking for credentials
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("docker-registry did not become ready within 20 s")


def _start(base: Path, *, with_auth: bool) -> LocalRegistry:
    require_tools("docker-registry")
    base.mkdir(parents=True, exist_ok=True)
    storage = base / "storage"
    storage.mkdir(exist_ok=True)
    username = password = None
    htpasswd = None
    if with_auth:
        require_tools("htpasswd")
        username, password = "tester", secrets.token_urlsafe(12)
        htpasswd = base / "htpasswd"
        subprocess.run(
            ["htpasswd", "-Bbc", str(htpasswd), username, password],
            check=True,
            capture_output=True,
        )
    port = _free_port()
    config = base / "config.yml"
    config.write_text(_config(storage, port, htpasswd))
    log = base / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    host = f"127.0.0.1:{port}"
    try:
        _wait_ready(host, process, log)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return LocalRegistry(host, storage, process, username, password)


def _stop(registry: LocalRegistry) -> None:
    registry.process.terminate()
    try:
        registry.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        registry.process.kill()
        registry.process.wait()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    started = _start(tmp_path_factory.mktemp("registry"), with_auth=False)
    yield started
    _stop(started)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    started = _start(tmp_path_factory.mktemp("auth-registry"), with_auth=True)
    yield started
    _stop(started)
