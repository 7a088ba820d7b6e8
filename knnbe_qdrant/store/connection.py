"""Where the store is and how to reach it: one frozen `Connection`, resolved once from arguments and the environment,
then passed everywhere (the mapper, the curator, the CLI, Ray actors: it pickles).

Resolution order, for each setting: the explicit argument, then the environment, then the default.
- A server when a URL is given (argument, or QDRANT_URL when no embedded path is given either; https:// for TLS),
  else the embedded store directory: argument, KNNBE_STORE, or ~/.local/share/knnbe-qdrant/store.
- Server settings: QDRANT_API_KEY, KNNBE_PREFIX (default knnbe_), QDRANT_TIMEOUT (seconds),
  QDRANT_PREFER_GRPC (1/true/yes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

from .._errors import InvalidInputError, StoreNotFoundError
from .._schema import DEFAULT_PREFIX

if TYPE_CHECKING:
    from .base import Store
    from .documents import Documents

ENV_STORE = "KNNBE_STORE"
ENV_URL = "QDRANT_URL"
ENV_API_KEY = "QDRANT_API_KEY"
ENV_PREFIX = "KNNBE_PREFIX"
ENV_TIMEOUT = "QDRANT_TIMEOUT"
ENV_GRPC = "QDRANT_PREFER_GRPC"


def default_store_path(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get(ENV_STORE):
        return Path(environ[ENV_STORE]).expanduser()
    base = Path(environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "knnbe-qdrant" / "store"


@dataclass(frozen=True)
class Connection:
    """An embedded store directory (`path`) or a Qdrant server (`url` and its settings); exactly one of the two.

    Build it with `Connection.resolve(...)`, which applies the environment and the defaults; the constructor takes
    the settings as they are."""

    path: Path | None = None
    url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never printed in a repr, a log or a traceback
    prefix: str = DEFAULT_PREFIX
    timeout: int | None = None
    prefer_grpc: bool = False

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise InvalidInputError("a connection names either an embedded store path or a server URL")
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path).expanduser())

    @classmethod
    def resolve(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        prefix: str | None = None,
        timeout: int | None = None,
        prefer_grpc: bool | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> Connection:
        """The connection the arguments describe, completed from the environment (see the module docstring)."""
        url = url or (environ.get(ENV_URL) if path is None else None) or None
        if not url:
            return cls(path=Path(path).expanduser() if path is not None else default_store_path(environ))
        if timeout is None and environ.get(ENV_TIMEOUT):
            raw = environ[ENV_TIMEOUT]
            try:
                timeout = int(raw)
            except ValueError:
                raise InvalidInputError(f"{ENV_TIMEOUT}={raw!r} is not a whole number of seconds") from None
        if timeout is not None and timeout < 1:
            raise InvalidInputError(f"the server timeout must be at least 1 second, got {timeout}")
        if prefer_grpc is None:
            prefer_grpc = environ.get(ENV_GRPC, "").lower() in ("1", "true", "yes")
        return cls(
            url=url,
            api_key=api_key or environ.get(ENV_API_KEY) or None,
            prefix=prefix or environ.get(ENV_PREFIX) or DEFAULT_PREFIX,
            timeout=timeout,
            prefer_grpc=prefer_grpc,
        )

    @property
    def is_server(self) -> bool:
        return self.url is not None

    def environment(self) -> dict[str, str]:
        """The environment variables under which `Connection.resolve()` gives this connection back (for a child
        process: the API key travels in the environment, not on a command line that `ps` shows)."""
        if self.url is None:
            return {ENV_STORE: str(self.path)}
        env = {ENV_URL: self.url, ENV_PREFIX: self.prefix, ENV_GRPC: "1" if self.prefer_grpc else "0"}
        if self.api_key:
            env[ENV_API_KEY] = self.api_key
        if self.timeout is not None:
            env[ENV_TIMEOUT] = str(self.timeout)
        return env

    def describe(self) -> str:
        return f"the Qdrant server at {self.url}" if self.url else f"the embedded store at {self.path}"

    def documents(self) -> Documents:
        """The store's small documents (API keys, audit log) without opening its collections: on an embedded store
        this works while another process (a running service) holds the shards. Close it when done."""
        if self.url is not None:
            from .client import QdrantClientStore
            from .meta_documents import MetaDocuments

            store = QdrantClientStore.connect(
                self.url, api_key=self.api_key, prefix=self.prefix, timeout=self.timeout, prefer_grpc=self.prefer_grpc
            )
            if not store.exists():
                store.close()
                raise StoreNotFoundError(
                    f"no store on {self.describe()} (prefix {self.prefix}): run `knnbe-qdrant build`"
                )
            return MetaDocuments(store, owned=True)
        from .documents import FileDocuments
        from .layout import MANIFEST_FILE

        assert self.path is not None
        if not (self.path / MANIFEST_FILE).exists():
            raise StoreNotFoundError(f"no store at {self.path}: run `knnbe-qdrant build` to create one")
        return FileDocuments(self.path)

    def open(self, *, create: bool = False) -> Store:
        """The store itself: a QdrantClientStore for a server, an EdgeStore for a directory (`create` makes the
        directory of a new one; a server creates collections when a store is built)."""
        if self.url is not None:
            from .client import QdrantClientStore  # qdrant-client is slow to import: only servers pay for it

            return QdrantClientStore.connect(
                self.url, api_key=self.api_key, prefix=self.prefix, timeout=self.timeout, prefer_grpc=self.prefer_grpc
            )
        from .edge import EdgeStore

        assert self.path is not None
        return EdgeStore(self.path, create=create)


Location = Union[Connection, str, "os.PathLike[str]", None]
"""What the library's `open` functions take: a Connection, an embedded store path, or None (resolve from the
environment)."""


def as_connection(location: Location) -> Connection:
    return location if isinstance(location, Connection) else Connection.resolve(location)


def open_store(location: Location = None, *, create: bool = False) -> Store:
    """The store at `location` (a Connection, an embedded store path, or None for the environment and defaults)."""
    return as_connection(location).open(create=create)
