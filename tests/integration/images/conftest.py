"""Registry fixtures for the image tests (see tests/registry_fixture.py)."""

from tests.registry_fixture import auth_registry, registry

__all__ = ["auth_registry", "registry"]
