"""Fixtures shared by the integration tests."""

from .gateway_support import gw, served

__all__ = ["gw", "served"]
