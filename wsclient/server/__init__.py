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

or from a shell with ``wsclient serve --port 8765``.
"""

from wsclient.server._hub import (
    Handler,
    Hub,
    HubError,
    HubServer,
    HubStatistics,
    RequestContext,
)

__all__ = ["Handler", "Hub", "HubError", "HubServer", "HubStatistics", "RequestContext"]
