"""What the service's endpoints share: its limits, the store and model once loaded, the keys, the batcher, the
metrics; and the one error type the endpoints raise (turned into a JSON response by the app)."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .._curation import Curator
from .._errors import ConflictError, InvalidInputError, KnnbeError, NotFoundError, QuotaExceededError, StoreError
from .._mapper import SkillMapper
from .._quota import DEFAULT_QUOTA, Quota, audit_room
from ..store.connection import Connection
from ..store.documents import record_edit, split_tenant_audit
from ..store.indexing import due_for_index
from .batching import MapBatcher, worker_shape
from .keys import Key, KeyRing
from .metrics import Metrics

log = logging.getLogger("knnbe_qdrant.service")
EDIT_FENCE_WAIT_S = 1.0
NO_KEY = "no key: send the header 'Authorization: Bearer <secret>'"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_sentences: int = 256
    max_chars: int = 5_000
    max_top: int = 100
    batch_wait_ms: float = 3.0
    map_workers: int | None = None  # None: batching.worker_shape's choice for this machine
    read_timeout_s: float = 30.0
    quota: Quota = DEFAULT_QUOTA  # skills and sentences of its own a tenant may add (_quota)


class ApiError(KnnbeError):
    """An answer other than 200, with its HTTP status and the message the client reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def status_of(exc: KnnbeError) -> int:
    """The HTTP status a library error answers with."""
    if isinstance(exc, ApiError):
        return exc.status
    return next((code for kind, code in ((InvalidInputError, 422), (NotFoundError, 404), (ConflictError, 409),
                                         (QuotaExceededError, 403), (StoreError, 503)) if isinstance(exc, kind)), 400)


class Service:
    """What the endpoints share. Loaded in a background thread, so /healthz answers at once and /readyz says
    when the store is open and the model loaded."""

    def __init__(self, connection: Connection | None, limits: Limits, mapper: SkillMapper | None = None) -> None:
        self.connection = connection
        self._given = mapper  # a mapper opened by the caller (tests, embedding the app): served as it is
        self.limits = limits
        self.metrics = Metrics()
        self.metrics.unindexed.set_function(self._unindexed)
        self.mapper: SkillMapper | None = None
        self.curator: Curator | None = None
        self.keys: KeyRing | None = None
        self.batcher: MapBatcher | None = None
        self.failure: str | None = None
        self.draining = False
        self.started = time.perf_counter()
        self.ready_after: float | None = None

    def load(self) -> None:
        where = self.connection.describe() if self.connection else "the given store"
        try:
            workers, threads = worker_shape(self.limits.map_workers)
            # A mapper the caller opened keeps its encoder's threads; ours gives each worker's calls their share.
            mapper = self._given or SkillMapper.open(self.connection, threads=threads)
            # Its own encoder, loaded at the first edit: stored vectors are encoded in full precision, queries
            # may be bf16 (see encoding.encoder).
            self.curator = Curator(mapper.store)
            # An edit that finds its tenant being deleted, or the store's curated data being carried by a rebuild,
            # answers 409 after a second rather than hold a worker thread for ten: with 80 edits waiting, they took
            # every thread, and with them the key checks of other requests (another tenant's map took 9.5 s; 0.5 s
            # with the second).
            self.curator.fence_wait = EDIT_FENCE_WAIT_S
            self.curator.quota = self.limits.quota
            try:
                split_tenant_audit(mapper.store.documents(), self.curator.tenants)
            except (OSError, KnnbeError) as exc:  # the tenants then see their edits from now on: no reason not to serve
                log.warning("could not fill the tenants' audit logs from the shared one: %s", exc)
            self.keys = KeyRing(mapper.store.documents())
            self.batcher = MapBatcher(mapper, max_wait_s=self.limits.batch_wait_ms / 1000, workers=workers,
                                      on_batch=self.metrics.on_batch)
            if waiting := due_for_index(mapper.store):  # indexing holds Python's lock: not while serving
                log.warning("%d points curators added are not indexed, and every query searches them one by one; "
                            "stop the service and run `knnbe-qdrant index` (about 30 s per 100,000 points)", waiting)
            self.mapper = mapper
            self.ready_after = time.perf_counter() - self.started
            log.info("ready in %.2f s: %s; %d map worker%s, encoder threads %s", self.ready_after,
                     mapper.store.describe(), workers, "" if workers == 1 else "s",
                     "as given" if self._given else threads)
        except KnnbeError as exc:
            self.failure = str(exc)
            log.error("cannot serve %s: %s", where, exc)
        except Exception as exc:  # reported by /readyz; the traceback goes to the log only
            self.failure = f"{type(exc).__name__} while opening the store"
            log.exception("cannot serve %s", where)

    @property
    def ready(self) -> bool:
        return self.mapper is not None

    def _unindexed(self) -> float:
        mapper = self.mapper
        try:
            waiting = mapper.store.unindexed() if mapper is not None else None
        except Exception:  # a scrape while the store closes (draining): unknown, and /metrics still answers
            waiting = None
        return float("nan") if waiting is None else float(waiting)

    def require_ready(self) -> tuple[SkillMapper, Curator, KeyRing, MapBatcher]:
        if self.mapper is None or self.curator is None or self.keys is None or self.batcher is None:
            raise ApiError(503, self.failure or "starting: the store is opening and the model loading")
        return self.mapper, self.curator, self.keys, self.batcher

    def authenticate(self, authorization: str) -> Key:
        """The live key an Authorization header's bearer secret belongs to, else ApiError 401 (503 before ready)."""
        _, _, keys, _ = self.require_ready()
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(401, NO_KEY)
        key = keys.check(secret.strip())
        if key is None:
            raise ApiError(401, "unknown or revoked key")
        return key

    def curator_for(self, key: Key) -> Curator:
        """The shared curator, acting as this key (every write records the key's name as created_by)."""
        _, curator, _, _ = self.require_ready()
        mine = copy.copy(curator)
        mine.user = key.name
        return mine

    @contextlib.contextmanager
    def editing(self, key: Key) -> Iterator[Curator]:
        """The key's curator, its tenant's fence held (Curator.editing) across an edit and its audit entry."""
        curator = self.curator_for(key)
        with curator.editing(key.tenant):
            # Checked again with the fence held: an edit that waited for its tenant's deletion, which revoked its
            # key, would otherwise make the tenant anew.
            if self.keys is not None and not self.keys.live(key.name):
                raise ApiError(401, f"key {key.name!r} was revoked while this edit waited (its tenant deleted, or the "
                                    "key revoked): nothing was changed")
            with audit_room(curator.store, curator.quota, key.tenant):
                yield curator

    def audit(self, key: Key, action: str, **details: Any) -> None:
        mapper, _, _, _ = self.require_ready()
        record_edit(mapper.store.documents(), key.tenant, key.name, action, **details)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self.mapper is not None and self._given is None:
            self.mapper.close()
