"""containerd's filter syntax for the fake: the subset clients use for events and listings."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_TERM = re.compile(r"\s*([A-Za-z0-9_.]+)\s*(==|!=|~=)\s*(.*?)\s*")


class ContainerdFilter:
    """containerd's filter syntax, the subset clients use for events and listings.

    Each string is one AND of ``field==value``, ``field!=value`` or ``field~=regex`` terms
    joined by commas; values may be quoted with ``"..."`` or ``|...|`` (the quotes protect
    commas). Several strings are ORed. No strings means "everything".
    """

    def __init__(self, filters: Sequence[str]) -> None:
        self.source = list(filters)
        self._alternatives = [_parse_conjunction(text) for text in filters]
        self._cache: dict[tuple[str, str], bool] = {}

    def match(self, fields: Callable[[str], str | None]) -> bool:
        if not self._alternatives:
            return True
        return any(
            all(_term_matches(term, fields(term[0])) for term in terms)
            for terms in self._alternatives
        )

    def match_event(self, namespace: str, topic: str) -> bool:
        """Whether an envelope with this namespace and topic passes (memoised: hot path)."""
        key = (namespace, topic)
        verdict = self._cache.get(key)
        if verdict is None:
            values = {"namespace": namespace, "topic": topic}
            verdict = self.match(values.get)
            if len(self._cache) < 4096:
                self._cache[key] = verdict
        return verdict


_Term = tuple[str, str, "str | re.Pattern[str]"]


def _parse_conjunction(text: str) -> list[_Term]:
    terms: list[_Term] = []
    for part in _split_unquoted(text):
        found = _TERM.fullmatch(part)
        if found is None:
            raise InvalidArgument(f"invalid filter {text!r}: cannot parse {part!r}")
        field, op, raw = found.groups()
        value = _unquote(raw)
        if op == "~=":
            try:
                terms.append((field, op, re.compile(value)))
            except re.error as exc:
                raise InvalidArgument(f"invalid filter {text!r}: bad regex: {exc}") from None
        else:
            terms.append((field, op, value))
    return terms


def _split_unquoted(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    for char in text:
        if quote:
            current.append(char)
            if char == quote:
                quote = ""
        elif char in '"|':
            quote = char
            current.append(char)
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quote:
        raise InvalidArgument(f"invalid filter {text!r}: unterminated quote")
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in '"|':
        return raw[1:-1]
    return raw


def _term_matches(term: _Term, value: str | None) -> bool:
    _, op, expected = term
    if op == "~=":
        assert isinstance(expected, re.Pattern)
        return value is not None and expected.search(value) is not None
    if op == "==":
        return value == expected
    return value != expected
