"""Unit tests: no daemon, no root (the in-memory fake, pure functions, sans-IO cores)."""
