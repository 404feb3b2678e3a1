"""Keep secrets out of reprs, logs and exception messages."""

from __future__ import annotations

import urllib.parse

__all__ = ["redact_url"]


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
