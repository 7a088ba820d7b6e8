"""The only code that talks to Qdrant: one interface, an embedded (Qdrant Edge) and a qdrant-client backend."""

from .base import Hit, Record, Store, Where
from .client import QdrantClientStore
from .edge import EdgeStore

__all__ = ["EdgeStore", "Hit", "QdrantClientStore", "Record", "Store", "Where"]
