"""`knnbe-qdrant serve` (the `server` extra): an HTTP API with scoped keys and a curator web page over one store.

`app` builds the FastAPI application; `routes` has the /v1 endpoints; `keys` the API keys; `batching` encodes
concurrent requests together; `metrics` the Prometheus metrics; `page` the curator page; `loadtest` the load test.
"""

from .keys import ROLES, Key, KeyRing

__all__ = ["ROLES", "Key", "KeyRing"]
