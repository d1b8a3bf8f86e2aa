"""The public surface: what actors/__init__.py exports exists, and nothing private leaks."""

from __future__ import annotations

import actors


def test_every_exported_name_exists_and_none_is_private() -> None:
    assert sorted(set(actors.__all__)) == sorted(actors.__all__), "no duplicates"
    for name in actors.__all__:
        assert not name.startswith("_"), name
        assert hasattr(actors, name), name


def test_no_public_name_is_left_unexported() -> None:
    public = {
        name
        for name, value in vars(actors).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("actors")
    }
    assert public <= set(actors.__all__), public - set(actors.__all__)


def test_the_moby_vocabulary_is_exported() -> None:
    """What issue 11 added to the seed's names: pinned so a refactor cannot drop them."""
    assert actors.INIT_PROCESS_NAME == "init"
    assert actors.EventType.UNKNOWN.value == "unknown"
    assert actors.EventInfo(container_id="c").error == ""
    assert actors.ExitStatus(code=0).oom_killed is False
    assert "oom_killed" in actors.ProcessState.__struct_fields__
    assert "signalled" in actors.ProcessState.__struct_fields__
    assert "backend" in actors.ClientStatistics.__struct_fields__
    assert {"queued", "dropped", "abandoned", "limit"} <= set(
        actors.DeliveryStatistics.__struct_fields__
    )


def test_handles_have_no_public_constructor() -> None:
    import pytest

    for handle in (actors.Container, actors.Task, actors.Process):
        with pytest.raises(TypeError, match="come from a Client"):
            handle()  # type: ignore[call-arg]  # the point: no public constructor


def test_images_api_is_exported() -> None:
    for name in ("Image", "Images", "LayerProgress", "PullProgress", "image_spec"):
        assert name in actors.__all__, name
    assert isinstance(actors.Client.images, property)


def test_every_exported_name_loads_from_its_table_entry() -> None:
    """The lazy table and ``__all__`` name the same things, and each entry resolves."""
    import importlib

    sources: dict[str, str] = vars(actors)["_SOURCES"]
    assert set(sources) == set(actors.__all__)
    for name, source in sources.items():
        module = importlib.import_module(source, "actors")
        assert getattr(actors, name) is getattr(module, name), name


def test_importing_the_package_loads_no_daemon_side_module() -> None:
    """The CLI pays only for what it uses: a bare ``import actors`` pulls in no layer."""
    import subprocess
    import sys

    code = "import sys, actors; print(sorted(m for m in sys.modules if m.startswith('actors.')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out
