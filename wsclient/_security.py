"""The rule that keeps credentials off plain-text links to other hosts.

Credentials are user info in the URL (sent as HTTP Basic auth), an
``Authorization``, ``Proxy-Authorization`` or ``Cookie`` handshake header,
or a call to ``authenticate()``. Over ``ws://`` they cross the network in
clear text, so they are refused unless the peer is this machine: a loopback
address, ``localhost``, or a Unix socket, which browsers also treat as
secure contexts. ``allow_insecure_credentials=True`` opts out.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable

from ._exceptions import InsecureCredentials

__all__: list[str] = []

CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
"""Handshake headers that carry credentials (lower case)."""


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ``::1``).

    By name, only ``localhost`` itself (any case), which resolvers answer
    locally; ``localhost.`` (fully qualified) may be asked of DNS, which can
    answer anything. Shorthand IPv4 (``127.1``) is not a literal here either.
    """
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def credential_headers(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that carry credentials, as given."""
    return [name for name in names if name.lower() in CREDENTIAL_HEADERS]


def check_credentials(
    *,
    secure: bool,
    host: str,
    what: str,
    unix_socket: str | os.PathLike[str] | None = None,
    allowed: bool = False,
) -> None:
    """Raise [`InsecureCredentials`][wsclient.InsecureCredentials] if ``what`` (credentials)
    would go in clear text to another host.

    ``secure`` is whether the URL is ``wss://``; ``host`` its host. The
    message names what was found and where it would go, never a value.
    """
    if secure or allowed or unix_socket is not None or is_loopback_host(host):
        return
    raise InsecureCredentials(
        f"refusing to send {what} over ws:// to {host} in clear text;"
        " use wss://, or pass allow_insecure_credentials=True"
    )
