"""The reference server: a Hub speaking the default dialect of ``wsclient``.

Run it in tests and examples with:

```python
hub = Hub()

@hub.on_query("greeting")
async def greeting(parameters, ctx):
    return {"hello": parameters["name"]}

async with hub.serve() as server:
    ...  # connect clients to server.url
```

or from a shell with ``wsclient serve --port 8765``. With
``Hub(redis_url="redis://127.0.0.1:6379/0")`` (``wsclient serve --redis URL``)
channels go through Redis, so several Hubs act as one.
"""

from wsclient.server._backplane import BackplaneError, BackplaneStatistics
from wsclient.server._hub import (
    Handler,
    Hub,
    HubError,
    HubServer,
    HubStatistics,
    RequestContext,
)

__all__ = [
    "BackplaneError",
    "BackplaneStatistics",
    "Handler",
    "Hub",
    "HubError",
    "HubServer",
    "HubStatistics",
    "RequestContext",
]
