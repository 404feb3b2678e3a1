"""The public API is exactly what __all__ says, and every piece of it is documented."""

from __future__ import annotations

import inspect

import pytest

import wsclient
import wsclient.server
import wsclient.testing


@pytest.mark.parametrize("module", [wsclient, wsclient.server, wsclient.testing])
def test_all_names_exist_and_are_documented(module: object) -> None:
    """Each name in __all__ is defined, listed once, and has a docstring."""
    names = module.__all__  # type: ignore[attr-defined]
    assert len(names) == len(set(names))
    for name in names:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{module.__name__}.{name} has no docstring"  # type: ignore[attr-defined]


def test_package_exports_every_public_name_of_its_private_modules() -> None:
    """Nothing a private module lists as public is missing from wsclient.__all__."""
    from wsclient import (
        _backoff,
        _codec,
        _exceptions,
        _heartbeat,
        _outbound,
        _reconnect,
        _transport,
    )

    exported = set(wsclient.__all__)
    for module in (_backoff, _codec, _exceptions, _heartbeat, _outbound, _reconnect, _transport):
        missing = set(module.__all__) - exported
        assert not missing, f"{module.__name__} exports {missing} but wsclient does not"


def test_exception_tree_is_rooted_at_wsclienterror() -> None:
    """Every exception wsclient exports derives from WSClientError."""
    for name in wsclient.__all__:
        value = getattr(wsclient, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert issubclass(value, wsclient.WSClientError), name
