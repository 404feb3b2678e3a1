"""Keep secrets out of reprs, logs and exception messages."""

from __future__ import annotations

import urllib.parse
from typing import Any

__all__ = ["credential_pieces", "redact_error", "redact_url", "secret_strings"]

MIN_SECRET = 4
"""Shorter strings are not masked: a ``"1"`` or ``"en"`` in the credentials would
mangle every message that holds it, and is no secret worth hiding."""


def redact_url(url: str) -> str:
    """Return ``url`` with its user info and query values masked.

    Query strings often carry tokens (``?token=...``), so their values are
    replaced; the names stay, which is what a person debugging needs.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:  # IPv6 literal
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return "<unparseable URL>"
    if parts.username is not None:
        # Tokens are sometimes passed as the user name, so mask all user info.
        netloc = f"***@{netloc}"
    query = ""
    if parts.query:
        # An item without "=" (?s3cr3t) may be a bare token: mask it whole.
        items = [pair.split("=", 1) for pair in parts.query.split("&") if pair]
        query = "?" + "&".join(f"{item[0]}=***" if len(item) == 2 else "***" for item in items)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query


def secret_strings(credentials: Any) -> list[str]:
    """The strings inside ``credentials`` (values, not keys), longest first.

    What a server's error message must not repeat: a token, a password, the
    user name beside it; integers count as their digits. Only those of at
    least ``MIN_SECRET`` (4) characters. Longest first, so a secret that
    contains another is masked whole.
    """
    found: set[str] = set()
    seen: set[int] = set()  # a container that holds itself must not loop forever
    stack = [credentials]
    while stack:
        value = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value) if value.bit_length() < 1000 else ""  # a PIN given as a number
        if isinstance(value, str):
            if len(value) >= MIN_SECRET:
                found.add(value)
        elif isinstance(value, (dict, list, tuple)) and id(value) not in seen:
            seen.add(id(value))
            stack.extend(value.values() if isinstance(value, dict) else value)
    return sorted(found, key=len, reverse=True)


def credential_pieces(values: list[str]) -> list[str]:
    """What of credential header values a server could quote back, longest first.

    A whole value (``Bearer abc``), what follows its scheme (``abc``), and the
    value of each ``name=value`` item (``session=abc; theme=dark``).
    """
    pieces = []
    for value in values:
        pieces.append(value.strip())
        pieces.append(value.strip().partition(" ")[2].strip())
        for item in value.replace(",", ";").split(";"):
            pieces.append(item.partition("=")[2].strip())
    return secret_strings(pieces)


def redact_error(error: BaseException, secrets: list[str]) -> None:
    """Mask ``secrets`` in ``error``'s message and its ``data`` (a server's error), in place."""
    if not secrets:
        return
    error.args = tuple(_mask(arg, secrets) for arg in error.args)
    data = getattr(error, "data", None)
    if data is not None:
        error.data = _mask(data, secrets)  # type: ignore[attr-defined]


def _mask(value: Any, secrets: list[str], depth: int = 0) -> Any:
    if depth > 100:  # hostile nesting: not worth a RecursionError, nor showing
        return "***"
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {
            _mask(key, secrets, depth + 1): _mask(item, secrets, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_mask(item, secrets, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(_mask(item, secrets, depth + 1) for item in value)
    return value
