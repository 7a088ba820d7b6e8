"""What the collections hold: names, payload fields, deterministic point ids, and the store manifest."""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from ._errors import InvalidInputError

SCHEMA_HISTORY = (
    ("0001_collections", "skills and memory collections with their payload indexes (tenant is_tenant, skill_id, "
     "label, hidden_for, status, source), reached through aliases"),
    ("0002_skill_status", "payload field `status` on every skill: \"active\" unless retired"),
    ("0003_hide_marks", "a tenant's mark on a global point it hid is a payload key of its own, `hidden_by_<tenant>`, "
     "set and removed atomically, instead of its name in the shared list `hidden_for`"),
)
"""Every schema change, in order: (migration id, what it does). knnbe_qdrant.migrations implements each one; a new
entry here without its implementation there fails on import."""

SCHEMA_VERSION = int(SCHEMA_HISTORY[-1][0].split("_", 1)[0])
"""A store below this version needs `knnbe-qdrant migrate`; one above it needs a newer knnbe-qdrant."""

DEFAULT_PREFIX = "knnbe_"
"""On a server, every collection of the plugin is named <prefix><name>, so it never touches a team's others."""

SKILLS = "skills"
MEMORY = "memory"
COLLECTIONS = (SKILLS, MEMORY)

GLOBAL_TENANT = "_global"
"""Tenant value of the shared layer (ESCO and the default memory) that every tenant sees."""

# Payload fields. Skills: one point per skill. Memory: one point per (sentence, skill) pair.
F_TENANT = "tenant"
F_SKILL_ID = "skill_id"
F_LABEL = "label"
F_ALT_LABELS = "alt_labels"
F_DESCRIPTION = "description"
F_TAXONOMY = "taxonomy"
F_TAXONOMY_VERSION = "taxonomy_version"
F_TEXT = "text"
F_SOURCE = "source"
F_CREATED_AT = "created_at"
F_CREATED_BY = "created_by"
F_UPDATED_AT = "updated_at"
F_STATUS = "status"
F_REVISION = "revision"
"""A skill's revision: 0 as built from the sources (absent), 1 as a curator adds it, raised by one by every change
of its point (label, description, retirement, reinstatement; not a tenant's hide mark, which is the tenant's own).
An edit that names the revision it read is refused when another edit came first: no curator overwrites unseen."""
RETIRED = "retired"
ACTIVE = "active"
"""A skill whose status is "retired" is never returned, for anyone; its memory sentences no longer vote for it.
(A keyword, not a boolean: Qdrant Edge 0.9's Python binding does not match boolean payload values.)"""
F_HIDDEN_FOR = "hidden_for"
"""Schema 2 and before: the list of tenants that hid a global point. Migration 0003 turns it into hide keys; the
global view still shows a point's hide marks under this name."""
HIDE_PREFIX = "hidden_by_"
_HIDE_ESCAPES = {"_": "_u", ".": "_d", "-": "_h"}
_HIDE_UNESCAPES = {v: k for k, v in _HIDE_ESCAPES.items()}


def hide_key(tenant: str) -> str:
    """The payload key that marks a global skill or sentence hidden for `tenant` (its value: the tenant's name).

    One key per tenant, not a shared list: setting or deleting a key is one atomic payload update on Qdrant, so two
    curators (threads, processes, service replicas) marking the same point never lose each other's mark, where a
    read-modify-write of a list could. Tenant names are escaped to letters, digits and "_" (an injective mapping),
    which every Qdrant payload path accepts unquoted."""
    return _escaped_hide_key(check_tenant(tenant))


@functools.lru_cache(maxsize=4096)
def _escaped_hide_key(tenant: str) -> str:  # cached: mapping asks for a tenant's key with every skill it may show
    return HIDE_PREFIX + re.sub(r"[_.-]", lambda m: _HIDE_ESCAPES[m.group()], tenant)


KEYS = "keys"
"""The store documents of the service's API keys (service.keys), by key name; each names its tenant. A tenant's
deletion revokes its keys, so a key cannot reach a later tenant of the same name."""


def revoked_key(record: dict[str, Any]) -> dict[str, Any]:
    """A key's record, revoked now: kept (its name stays taken), refused from its next request on."""
    return {**record, "revoked_at": utc_now()}


HIDERS = "hiders"
"""The store documents (one per tenant) that register the tenants that ever hid a global point: a hide key is a
payload key of its own, which no facet lists, so `Curator.tenants()` finds them through these."""


TOMBSTONES = "removed"
"""Store documents, one per global point a curator removed or moved away (by point id): {"collection", "at", "by"};
`build --force` removes those points again from what it rebuilt from the sources."""


def hidden_tenants(payload: dict[str, Any]) -> list[str]:
    """The tenants that hid this point, from its hide keys."""
    unescape = lambda m: _HIDE_UNESCAPES[m.group()]  # noqa: E731
    return sorted(re.sub(r"_[udh]", unescape, key[len(HIDE_PREFIX):]) for key in payload if key.startswith(HIDE_PREFIX))


# Keyword payload indexes each collection gets; the tenant one is marked is_tenant (Qdrant's multitenancy advice).
KEYWORD_INDEXES = {
    SKILLS: (F_TENANT, F_SKILL_ID, F_LABEL, F_STATUS),
    MEMORY: (F_TENANT, F_SKILL_ID, F_SOURCE),
}

TENANT_INDEX = F_TENANT

# A fixed namespace: the same content key gives the same point id on every machine, forever.
_NAMESPACE = uuid.UUID("5b0f6f3c-3f0e-4c3a-9a4e-6b6e6e4b7145")


@functools.lru_cache(maxsize=1 << 16)
def skill_point_id(tenant: str, skill_id: str) -> str:
    """Cached: mapping asks for every kNN-only skill's point id in every batch, and uuid5 over JSON costs 15-35 µs."""
    return str(uuid.uuid5(_NAMESPACE, json.dumps([SKILLS, tenant, skill_id])))


def memory_point_id(tenant: str, skill_id: str, text: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, json.dumps([MEMORY, tenant, skill_id, text])))


TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def check_tenant(tenant: str) -> str:
    """Tenant names are plain identifiers; the global layer's reserved name is not one of them."""
    if not isinstance(tenant, str) or not is_tenant_name(tenant):
        raise InvalidInputError(
            f"tenant {tenant!r} is not a valid name (letters, digits, '_', '.', '-'; at most 64; not starting "
            "with '_' or another sign)"
        )
    return tenant


@functools.lru_cache(maxsize=4096)
def is_tenant_name(name: str) -> bool:  # cached: mapping checks the tenant of every skill it may show
    return re.fullmatch(TENANT_PATTERN[1:-1], name) is not None


def has_texts(payload: dict[str, Any], *fields: str) -> bool:
    """Whether each of `fields` holds a string: a point another program wrote into a collection (or a damaged one)
    may lack one, and mapping passes over it rather than fail on it."""
    return all(type(payload.get(f)) is str for f in fields)


def revision_of(payload: dict[str, Any]) -> int:
    """0 for a skill without a revision (from before them) or with something else in its place (a point another
    program wrote: `"x"` failed every listing of the skills, every tenant's); the next edit writes a number there."""
    value = payload.get(F_REVISION, 0)
    return value if type(value) is int and value >= 0 else 0


def utc_now(*, precise: bool = False) -> str:
    """Now, in ISO 8601 UTC; `precise` to the microsecond (a stamp that tells two edits of one second apart)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds" if precise else "seconds")


def all_migrations_applied() -> list[dict[str, Any]]:
    """What a new store records as its migrations: it is born at the latest schema."""
    now = utc_now()
    return [{"id": migration_id, "applied_at": now} for migration_id, _ in SCHEMA_HISTORY]


@dataclass
class Manifest:
    """What a store was built with. Written before the first point and marked "ready" after the last one, so a
    half-built store is recognisable; opening with another model than `model`/`dimension` is refused."""

    model: str
    dimension: int
    schema_version: int = SCHEMA_VERSION
    distance: str = "cosine"
    state: str = "building"
    skill_text: str = "label"
    sources: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    build_seconds: float | None = None
    generation: int = 1
    """Which physical collections serve: bumped by a re-embedding migration, which keeps the previous ones."""
    previous: dict[str, Any] | None = None
    """model, dimension and generation before the last re-embedding, for `migrate --rollback`."""
    migrations: list[dict[str, Any]] = field(default_factory=list)
    """Migrations applied to this store, in order: {"id", "applied_at"}."""
    params: dict[str, Any] | None = None
    """Scoring defaults chosen by `knnbe-qdrant tune` on validation files (lam, k, tau, aggregation)."""
    pending_reembed: dict[str, Any] | None = None
    """A re-embedding begun and not yet swapped in: {"model", "generation"}."""
    created_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """The manifest a store recorded; InvalidInputError (a ValueError) naming the field when it is not one."""
        if not isinstance(data, dict):
            raise InvalidInputError(f"not a JSON object but {type(data).__name__}")
        for name, kinds in _MANIFEST_TYPES.items():
            if name not in data:
                if name in ("model", "dimension"):
                    raise InvalidInputError(f"field {name!r} is missing")
                continue
            if not isinstance(data[name], kinds) or (isinstance(data[name], bool) and bool not in kinds):
                raise InvalidInputError(f"field {name!r} is {type(data[name]).__name__}, not what a manifest holds")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "dimension": (int,), "schema_version": (int,), "distance": (str,), "state": (str,),
    "skill_text": (str,), "sources": (dict,), "counts": (dict,), "build_seconds": (int, float, type(None)),
    "generation": (int,), "previous": (dict, type(None)), "migrations": (list,), "params": (dict, type(None)),
    "pending_reembed": (dict, type(None)), "created_at": (str,), "updated_at": (str,),
}
