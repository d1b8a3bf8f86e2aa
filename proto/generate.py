"""Regenerate the Python modules for every .proto under proto/, or check they are fresh.

    python proto/generate.py          # from the repo root: (re)write the generated files
    python proto/generate.py --check  # exit 1 if any generated file is stale/missing/extra

The sources stay in proto/ (not an installed package); the modules are generated inside the
library, under actors/containerd/pb/, so the wheel installs no generic top-level ``proto``
name. protoc maps the virtual path ``actors/containerd/pb`` onto proto/
(``-I actors/containerd/pb=proto``), which is why the .proto files import each other as
``actors/containerd/pb/...`` and the generated modules as ``actors.containerd.pb....``.
The grpclib and mypy plugins are taken from the directory of ``sys.executable`` (the active
venv's bin dir). Every *_pb2.py, *_pb2.pyi and *_grpc.py under actors/containerd/pb/ is
treated as generated (an unexpected one is reported as extra and deleted on regeneration);
grpclib's empty *_grpc.py for service-less files is dropped.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
# Where the generated modules live, relative to the root; also protoc's virtual path.
OUT_PREFIX = "actors/containerd/pb"
OUT_DIR = ROOT / OUT_PREFIX
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_grpc.py")
PLUGINS = {"grpclib_python": "protoc-gen-grpclib_python", "mypy": "protoc-gen-mypy"}


@dataclass
class Diff:
    """Differences between freshly generated output and the files in the tree."""

    stale: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.stale or self.missing or self.extra)


def proto_files() -> list[str]:
    """All .proto files under proto/, as sorted root-relative POSIX paths."""
    return sorted(p.relative_to(ROOT).as_posix() for p in PROTO_DIR.rglob("*.proto"))


def _plugin(name: str) -> Path:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return exe
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"protoc plugin {name!r} not found next to {sys.executable}")
    return Path(found)


def _protobuf_include() -> Path:
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise SystemExit("grpcio-tools is not installed in this interpreter")
    return Path(spec.origin).parent / "_proto"


def _run_protoc(out_dir: Path) -> None:
    """Generate every module into out_dir (which mirrors the repo root)."""
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        f"{OUT_PREFIX}={PROTO_DIR.relative_to(ROOT).as_posix()}",
        "-I",
        str(_protobuf_include()),
        *(f"--plugin=protoc-gen-{kind}={_plugin(exe)}" for kind, exe in PLUGINS.items()),
        f"--python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--grpclib_python_out={out_dir}",
        *proto_files(),
    ]
    subprocess.run(args, cwd=ROOT, check=True)
    # grpclib emits a comment-only *_grpc.py for files without a service; drop those.
    for grpc_file in out_dir.rglob("*_grpc.py"):
        lines = grpc_file.read_text().splitlines()
        if all(not line.strip() or line.startswith("#") for line in lines):
            grpc_file.unlink()


def _expected_inits(generated: list[str]) -> list[str]:
    """__init__.py for the output root and every directory that holds generated modules."""
    dirs = {OUT_PREFIX}
    for rel in generated:
        parent = Path(rel).parent
        while parent.as_posix() not in (OUT_PREFIX, "."):
            dirs.add(parent.as_posix())
            parent = parent.parent
    return sorted(f"{d}/__init__.py" for d in dirs)


def _committed() -> list[str]:
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in OUT_DIR.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def _diff(tmp: Path) -> Diff:
    fresh = sorted(
        p.relative_to(tmp).as_posix()
        for p in tmp.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )
    committed = set(_committed())
    diff = Diff()
    for rel in fresh:
        if rel not in committed:
            diff.missing.append(rel)
        elif (ROOT / rel).read_bytes() != (tmp / rel).read_bytes():
            diff.stale.append(rel)
    diff.extra = sorted(committed - set(fresh))
    diff.missing += [i for i in _expected_inits(fresh) if not (ROOT / i).is_file()]
    return diff


def check() -> Diff:
    """Generate into a temporary directory and compare byte-for-byte with the tree."""
    with tempfile.TemporaryDirectory(prefix="proto-gen-") as tmp:
        _run_protoc(Path(tmp))
        return _diff(Path(tmp))


def generate() -> Diff:
    """Bring the tree up to date; returns what had to change."""
    with tempfile.TemporaryDirectory(prefix="proto-gen-") as tmp:
        _run_protoc(Path(tmp))
        diff = _diff(Path(tmp))
        for rel in diff.stale + diff.missing:
            dest = ROOT / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith("/__init__.py"):
                dest.touch()
            else:
                shutil.copyfile(Path(tmp) / rel, dest)
        for rel in diff.extra:
            (ROOT / rel).unlink()
        return diff


def _report(diff: Diff, labels: tuple[str, str, str]) -> list[str]:
    groups = zip(labels, (diff.stale, diff.missing, diff.extra), strict=True)
    return [f"{label}: {path}" for label, paths in groups for path in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if generated files are stale, missing or extra",
    )
    opts = parser.parse_args(argv)
    if opts.check:
        diff = check()
        lines = _report(diff, ("stale", "missing", "extra"))
        lines.append(
            "generated files are up to date" if diff.clean else "run: python proto/generate.py"
        )
        sys.stdout.write("\n".join(lines) + "\n")
        return 0 if diff.clean else 1
    diff = generate()
    lines = _report(diff, ("updated", "created", "removed"))
    lines.append(f"{len(proto_files())} .proto files, " + ("no changes" if diff.clean else "done"))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
