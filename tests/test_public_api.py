"""The public API is exactly what __all__ says, and every piece of it is documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

import wsclient
import wsclient.server
import wsclient.sync
import wsclient.testing


@pytest.mark.parametrize("module", [wsclient, wsclient.server, wsclient.sync, wsclient.testing])
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
    names = [
        "_backoff",
        "_buffer",
        "_channels",
        "_client",
        "_codec",
        "_correlator",
        "_dialect",
        "_exceptions",
        "_heartbeat",
        "_jsonrpc",
        "_mux",
        "_outbound",
        "_pool",
        "_reconnect",
        "_relay",
        "_transport",
    ]
    exported = set(wsclient.__all__)
    modules = [importlib.import_module(f"wsclient.{name}") for name in names]
    for module in modules:
        missing = set(module.__all__) - exported
        assert not missing, f"{module.__name__} exports {missing} but wsclient does not"


def test_exception_tree_is_rooted_at_wsclienterror() -> None:
    """Every exception wsclient exports derives from WSClientError."""
    for name in wsclient.__all__:
        value = getattr(wsclient, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert issubclass(value, wsclient.WSClientError), name


def test_the_messaging_surface_lives_in_wsclient_itself() -> None:
    """The names users reach for are exported from wsclient, with the exception tree."""
    required = {
        "connect",
        "Client",
        "Session",
        "Subscription",
        "SubscriptionState",
        "Backoff",
        "Heartbeat",
        "QueuePolicy",
        "BufferPolicy",
        "ConnectionState",
        "Dialect",
        "DefaultDialect",
        "JsonRpcDialect",
        "Codec",
        "JsonCodec",
        "Transport",
        "WebSocketTransport",
        "connect_transport",
        "WSClientError",
        "ConnectionLost",
        "RequestTimeout",
        "RemoteError",
        "QueueFull",
        "InvalidState",
        "ProtocolError",
        "HeartbeatTimeout",
        "ReconnectFailed",
    }
    assert required <= set(wsclient.__all__), required - set(wsclient.__all__)
    assert issubclass(wsclient.RequestTimeout, TimeoutError)
    assert wsclient.connect is wsclient._client.connect


@pytest.mark.parametrize(
    ("async_class", "sync_class"),
    [
        (wsclient.Client, wsclient.sync.SyncClient),
        (wsclient.Session, wsclient.sync.SyncSession),
        (wsclient.Subscription, wsclient.sync.SyncSubscription),
    ],
)
def test_sync_classes_have_every_public_method_of_the_async_ones(
    async_class: type, sync_class: type
) -> None:
    """The blocking client mirrors the async API: aclose() becomes close(), the rest keep names."""
    blocking_names = {"aclose": "close"}
    # The async client's own layers: a blocking client has no use for them.
    exempt = {"transport"}
    public = {name for name in dir(async_class) if not name.startswith("_")} - exempt
    missing = sorted(
        name for name in public if not hasattr(sync_class, blocking_names.get(name, name))
    )
    assert not missing, f"{sync_class.__name__} lacks {missing}"
