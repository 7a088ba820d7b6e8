"""Where the store is: explicit arguments first, then the environment, then the per-user default directory."""

from __future__ import annotations

import os
from pathlib import Path

from .store import EdgeStore, Store

DEFAULT_PREFIX = "knnbe_"

ENV_STORE = "KNNBE_STORE"
ENV_URL = "QDRANT_URL"
ENV_API_KEY = "QDRANT_API_KEY"
ENV_PREFIX = "KNNBE_PREFIX"
ENV_TIMEOUT = "QDRANT_TIMEOUT"
ENV_GRPC = "QDRANT_PREFER_GRPC"


def default_store_path() -> Path:
    if os.environ.get(ENV_STORE):
        return Path(os.environ[ENV_STORE]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "knnbe-qdrant" / "store"


def locate(path: str | os.PathLike[str] | None, url: str | None) -> tuple[str | None, Path | None]:
    """(server URL, None) or (None, embedded store directory), by the rule `open_store` documents."""
    url = url or (os.environ.get(ENV_URL) if path is None else None)
    if url:
        return url, None
    return None, Path(path) if path is not None else default_store_path()


def open_store(
    path: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    prefix: str | None = None,
    create: bool = False,
    timeout: int | None = None,
    prefer_grpc: bool | None = None,
) -> Store:
    """A Qdrant server when a URL is given (argument or QDRANT_URL; https:// for TLS), else the embedded store at
    `path` (argument, KNNBE_STORE, or ~/.local/share/knnbe-qdrant/store). Server options fall back to the
    environment: QDRANT_API_KEY, KNNBE_PREFIX, QDRANT_TIMEOUT (seconds), QDRANT_PREFER_GRPC (1/true)."""
    url, directory = locate(path, url)
    if url:
        from .store.client import QdrantClientStore

        if timeout is None and os.environ.get(ENV_TIMEOUT):
            timeout = int(os.environ[ENV_TIMEOUT])
        if prefer_grpc is None:
            prefer_grpc = os.environ.get(ENV_GRPC, "").lower() in ("1", "true", "yes")
        return QdrantClientStore.connect(
            url,
            api_key=api_key or os.environ.get(ENV_API_KEY),
            prefix=prefix or os.environ.get(ENV_PREFIX) or DEFAULT_PREFIX,
            timeout=timeout,
            prefer_grpc=prefer_grpc,
        )
    return EdgeStore(directory, create=create)
