"""Content digests (``sha256:<hex>``, ``sha512:<hex>``) and streaming verification.

Everything we receive from a registry or an archive is checked here before anyone commits it:
:class:`BlobVerifier` is fed the chunks as they arrive and fails *as soon as* the stream runs
past the descriptor's size (so an endless stream is cut at ``size + 1`` bytes), and at the end
checks the size and the digest. A mismatch is :class:`~actors.errors.DataLoss`.

API::

    algorithm, encoded = parse_digest("sha256:" + "0" * 64)
    digest_of(b"data")                                  # 'sha256:3a6e...'
    verify_bytes(data, expected_digest, expected_size, what="manifest")
    v = BlobVerifier(digest, size, what="layer sha256:...")
    v.update(chunk) ...; v.finish()
"""

from __future__ import annotations

import hashlib
import re

from ..errors import DataLoss, InvalidArgument

__all__ = [
    "BlobVerifier",
    "digest_of",
    "parse_digest",
    "short_digest",
    "verify_bytes",
]

_ENCODED = {"sha256": re.compile(r"[0-9a-f]{64}"), "sha512": re.compile(r"[0-9a-f]{128}")}


def parse_digest(digest: str) -> tuple[str, str]:
    """Split a digest into (algorithm, lowercase hex); only sha256 and sha512 are accepted."""
    if not isinstance(digest, str):
        raise InvalidArgument(f"invalid digest {digest!r}", local=True)
    algorithm, sep, encoded = digest.partition(":")
    pattern = _ENCODED.get(algorithm)
    if not sep or pattern is None:
        raise InvalidArgument(
            f"invalid digest {digest[:80]!r}: algorithm must be sha256 or sha512", local=True
        )
    if not pattern.fullmatch(encoded):
        raise InvalidArgument(
            f"invalid digest {digest[:150]!r}: wrong length or not lowercase hex", local=True
        )
    return algorithm, encoded


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The digest of ``data`` in ``algorithm:hex`` form."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def short_digest(digest: str) -> str:
    """The 12-hex form docker prints (``sha256:abcdef123456``)."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}:{encoded[:12]}"


class BlobVerifier:
    """Checks a stream of chunks against an expected digest and size (sans-IO)."""

    def __init__(
        self, digest: str, size: int, *, what: str, offset: int = 0, check_digest: bool = True
    ) -> None:
        algorithm, _ = parse_digest(digest)
        if size < 0:
            raise InvalidArgument(f"{what}: negative size {size}", local=True)
        self.digest = digest
        self.size = size
        self.what = what
        # After a resume we did not see the first ``offset`` bytes, so only the size can be
        # checked here; the content store checks the digest at commit. A caller whose bytes
        # go to the content store anyway can leave the digest to it (``check_digest``).
        self._hasher = hashlib.new(algorithm) if offset == 0 and check_digest else None
        self.received = offset

    def update(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.size:
            raise DataLoss(
                f"{self.what}: received more than the expected {self.size} bytes", local=True
            )
        if self._hasher is not None:
            self._hasher.update(chunk)

    def finish(self) -> None:
        if self.received != self.size:
            raise DataLoss(
                f"{self.what}: stream ended after {self.received} of {self.size} bytes",
                local=True,
            )
        if self._hasher is not None:
            algorithm = self.digest.partition(":")[0]
            actual = f"{algorithm}:{self._hasher.hexdigest()}"
            if actual != self.digest:
                raise DataLoss(
                    f"{self.what}: digest mismatch (expected {self.digest}, got {actual})",
                    local=True,
                )


def verify_bytes(data: bytes, digest: str, size: int | None = None, *, what: str) -> None:
    """Raise DataLoss unless ``data`` has ``digest`` (and ``size`` when given)."""
    verifier = BlobVerifier(digest, len(data) if size is None else size, what=what)
    verifier.update(data)
    verifier.finish()
