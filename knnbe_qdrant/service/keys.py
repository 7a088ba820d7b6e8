"""API keys with a role and a tenant scope. The secret is shown once, at creation; only its SHA-256 is stored, in the
store itself (see store.documents), so every replica of the service sees the same keys and a revocation reaches
all of them at the next request.

Roles, each including the ones before it:
- reader:  map with its tenant's overlay, read its tenant's view (skills, memory, audit);
- curator: also edit its tenant's own layer (or, for a key of the global layer, nothing more: see admin);
- admin:   also edit the global layer and manage tenants. An admin key has no tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from typing import Any

from .._errors import ConflictError, InvalidInputError, NotFoundError
from .._schema import GLOBAL_TENANT, KEYS, check_tenant, is_tenant_name, revoked_key, utc_now
from ..store.documents import Documents

ROLES = ("reader", "curator", "admin")
KIND = KEYS
_PREFIX = "knq_"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def is_key_record(name: str, record: Any) -> bool:
    """Whether a stored key record has the shape `create` gives it. One edited by hand into another (or damaged:
    `5`, a role no code knows, a tenant that is no tenant's name) made every request to the service a 500, every
    key's; now it is left out, authenticates nobody, and is named in the service's log and by `keys list`."""
    if not isinstance(record, dict):
        return False
    tenant, role = record.get("tenant"), record.get("role")
    scoped = isinstance(tenant, str) and tenant != GLOBAL_TENANT and is_tenant_name(tenant)
    return (record.get("name") == name and role in ROLES and isinstance(record.get("created_at"), str)
            and isinstance(record.get("sha256"), str) and re.fullmatch("[0-9a-f]{64}", record["sha256"]) is not None
            and (scoped if role != "admin" else tenant in (None, GLOBAL_TENANT)))


@dataclass(frozen=True)
class Key:
    name: str
    tenant: str | None
    role: str
    created_at: str
    revoked_at: str | None = None

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def public(self) -> dict[str, Any]:
        return asdict(self)


class KeyRing:
    """Creates, lists, revokes and checks keys. Checking compares the presented secret's digest with every stored
    digest in constant time, and keeps the keys cached until the documents change."""

    def __init__(self, documents: Documents) -> None:
        self.documents = documents
        self._cache: tuple[object, dict[str, dict[str, Any]]] | None = None
        self._lock = threading.Lock()
        self.damaged: list[str] = []  # names of the stored records `is_key_record` left out

    def _records(self) -> dict[str, dict[str, Any]]:
        version = self.documents.version(KIND)
        with self._lock:
            if version is not None and self._cache is not None and self._cache[0] == version:
                return self._cache[1]
        stored = self.documents.all(KIND)
        records = {name: r for name, r in stored.items() if is_key_record(name, r)}
        damaged = sorted(set(stored) - set(records))
        with self._lock:
            if damaged and damaged != self.damaged:  # said once, not at every request
                logging.getLogger("knnbe_qdrant.keys").error(
                    "key records left out, not in the shape `keys create` gives them (fix or remove them): %s",
                    ", ".join(damaged))
            self.damaged = damaged
            self._cache = (version, records) if version is not None else None
        return records

    def create(self, *, role: str, tenant: str | None = None, name: str | None = None) -> tuple[Key, str]:
        """A new key and its secret (shown once; only its digest is kept)."""
        if role not in ROLES:
            raise InvalidInputError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if role == "admin" and tenant is not None:
            raise InvalidInputError("an admin key manages the global layer and every tenant: give it no --tenant")
        if role != "admin" and tenant is None:
            raise InvalidInputError(f"a {role} key needs a --tenant (global-layer edits take an admin key)")
        if tenant is not None:
            check_tenant(tenant)
        name = name or f"{tenant or 'admin'}-{role}-{secrets.token_hex(3)}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", name):
            raise InvalidInputError(f"key name {name!r}: letters, digits, '_', '.', '@', '-'; at most 64")
        taken = f"a key named {name!r} exists already (revoked keys keep their name)"
        if name in self._records():
            raise ConflictError(taken)
        secret = _PREFIX + secrets.token_urlsafe(32)
        key = Key(name=name, tenant=tenant, role=role, created_at=utc_now())
        # Inserted only where no key of that name is: of two creations racing for one name, one gets a secret.
        if not self.documents.put_new(KIND, name, {**key.public(), "sha256": _digest(secret)}):
            raise ConflictError(taken)
        return key, secret

    def list(self) -> list[Key]:
        return sorted((_key(r) for r in self._records().values()), key=lambda k: k.created_at)

    def revoke(self, name: str) -> Key:
        record = self._records().get(name)
        if record is None:
            raise NotFoundError(f"the record of key {name!r} is not in the shape `keys create` gives it (it "
                                "authenticates nobody): fix or remove it" if name in self.damaged
                                else f"no key named {name!r}")
        if record.get("revoked_at"):
            return _key(record)
        record = revoked_key(record)
        self.documents.put(KIND, name, record)
        return _key(record)

    def live(self, name: str) -> bool:
        """Whether the key of this name exists and is not revoked (a request that waited may see it revoked)."""
        record = self._records().get(name)
        return record is not None and not record.get("revoked_at")

    def check(self, secret: str) -> Key | None:
        """The live key this secret belongs to, or None. Constant time in the secret: every digest is compared."""
        presented = _digest(secret)
        found = None
        for record in self._records().values():
            if hmac.compare_digest(presented, str(record.get("sha256", ""))) and not record.get("revoked_at"):
                found = record
        return _key(found) if found is not None else None


def _key(record: dict[str, Any]) -> Key:
    tenant = record.get("tenant")
    return Key(name=record["name"], tenant=None if tenant in (None, GLOBAL_TENANT) else tenant, role=record["role"],
               created_at=record["created_at"], revoked_at=record.get("revoked_at"))
