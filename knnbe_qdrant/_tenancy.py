"""Who sees what: the global layer (ESCO and the default memory) plus, for a tenant, its own skills and memory,
minus what it hid. Every read of the mapper and of the curator goes through these filters. And what a tenant has:
its counts, and its deletion."""

from __future__ import annotations

from itertools import islice
from typing import Any, TypeGuard

from . import _schema as S
from ._errors import NotFoundError
from .store.base import Store, Where
from .store.documents import Documents, audit_tenant, tenant_audit


def layers(tenant: str | None) -> list[str]:
    if tenant is None or tenant == S.GLOBAL_TENANT:
        return [S.GLOBAL_TENANT]
    return [S.GLOBAL_TENANT, S.check_tenant(tenant)]


def is_tenant(tenant: str | None) -> TypeGuard[str]:
    """A tenant's name: not None, not empty, not the global layer."""
    return bool(tenant) and tenant != S.GLOBAL_TENANT


def visible_skills(tenant: str | None, *, marked: bool = True) -> Where:
    """What `tenant` may see of the skills. `marked=False` says the tenant never hid anything (the mapper knows from
    the store's registry of tenants with marks), which spares a filter on a key no index covers."""
    must_not: dict = {S.F_STATUS: S.RETIRED}
    if is_tenant(tenant) and marked:
        must_not[S.hide_key(tenant)] = tenant
    return Where(must={S.F_TENANT: layers(tenant)}, must_not=must_not)


def visible_memory(tenant: str | None, *, marked: bool = True) -> Where:
    # Sentences of retired skills still come back; the mapper drops their votes with the skill.
    must_not = {S.hide_key(tenant): tenant} if is_tenant(tenant) and marked else {}
    return Where(must={S.F_TENANT: layers(tenant)}, must_not=must_not)


def visible_payload(payload: dict[str, Any], tenant: str | None) -> dict[str, Any]:
    """A point's payload as `tenant` may read it: without hide keys, which name other tenants (and which, for a
    point the tenant can see at all, never name the tenant itself). The global view shows them as one list,
    `hidden_for`."""
    out = {k: v for k, v in payload.items() if not k.startswith(S.HIDE_PREFIX)}
    if not is_tenant(tenant):
        hidden = S.hidden_tenants(payload)
        if hidden:
            out[S.F_HIDDEN_FOR] = hidden
    return out


def skill_is_visible(payload: dict, tenant: str | None) -> bool:
    return (
        payload.get(S.F_TENANT) in layers(tenant)
        and payload.get(S.F_STATUS) != S.RETIRED
        and not (is_tenant(tenant) and S.hide_key(tenant) in payload)
    )


def marks_of_removed(tombstones: dict[str, Any], point_id: str) -> dict[str, str]:
    """The hide marks a removed global point had, from its tombstone (`_carry.record_removal`), for a curator who adds
    it again: a tenant's hiding is not undone by another curator's removal and re-adding of the point."""
    return {S.hide_key(t): t for t in _hiders(tombstones.get(point_id))}


def _hiders(tombstone: Any) -> list[str]:
    """The tenants a tombstone names as having hidden its point; none from one edited into another shape by hand."""
    hidden = tombstone.get(S.F_HIDDEN_FOR) if isinstance(tombstone, dict) else None
    return [t for t in hidden if isinstance(t, str) and S.is_tenant_name(t)] if isinstance(hidden, list) else []


def _removed_marks(documents: Documents, tenant: str) -> dict[str, dict[str, Any]]:
    """The tombstones that keep a mark of `tenant`: a deleted tenant's marks leave them too (`_forget`), so that a
    later tenant of the name hides nothing it did not."""
    return {point_id: tombstone for point_id, tombstone in documents.all(S.TOMBSTONES).items()
            if tenant in _hiders(tombstone)}


def _forget(documents: Documents, tenant: str, tombstones: dict[str, dict[str, Any]]) -> None:
    kept = {pid: {**t, S.F_HIDDEN_FOR: [h for h in _hiders(t) if h != tenant]} for pid, t in tombstones.items()}
    documents.put_many(S.TOMBSTONES, kept)  # one write for them all


_DELETE_CHUNK = 5000


def tenant_counts(store: Store) -> dict[str, dict[str, int]]:
    """Each tenant with its own points per collection and how many global points it hid."""
    out: dict[str, dict[str, int]] = {}
    for collection in S.COLLECTIONS:
        for tenant, n in store.distinct(collection, S.F_TENANT).items():
            if tenant != S.GLOBAL_TENANT:
                out.setdefault(tenant, {S.SKILLS: 0, S.MEMORY: 0, "hidden": 0})[collection] = n
    # Hide marks are one key per tenant, which no facet lists: the tenants that ever hid something are
    # registered when they do, and their marks counted.
    documents = store.documents()
    for tenant in [*documents.all(S.HIDERS), *out]:
        hidden = sum(store.count(c, where={S.hide_key(tenant): tenant}) for c in S.COLLECTIONS)
        if hidden or tenant in out:
            out.setdefault(tenant, {S.SKILLS: 0, S.MEMORY: 0, "hidden": 0})["hidden"] = hidden
    # And a tenant whose only trace is a live key, its audit log (a rebuild that discarded the edits keeps it), or a
    # mark kept in the tombstone of a global point removed since: `tenant delete` finds and removes those, so the
    # list shows them.
    keyed = [k.get("tenant") for k in _live_key_records(documents).values()]
    logged = [audit_tenant(kind) for kind in documents.logs()]
    marked = [t for tombstone in documents.all(S.TOMBSTONES).values() for t in _hiders(tombstone)]
    for name in [*keyed, *logged, *marked]:
        # Not an admin key's (none, or "global"), not the log of every edit, nor a name made by hand.
        if isinstance(name, str) and is_tenant(name) and S.is_tenant_name(name):
            out.setdefault(name, {S.SKILLS: 0, S.MEMORY: 0, "hidden": 0})
    return dict(sorted(out.items()))


def _live_key_records(documents: Documents) -> dict[str, dict[str, Any]]:
    """The stored key records not revoked, by name; a record that is no object (damaged) is none."""
    return {name: k for name, k in sorted(documents.all(S.KEYS).items())
            if isinstance(k, dict) and not k.get("revoked_at")}


def _live_keys(documents: Documents, tenant: str) -> dict[str, dict[str, Any]]:
    return {name: k for name, k in _live_key_records(documents).items() if k.get("tenant") == tenant}


def _revoke(documents: Documents, keys: dict[str, dict[str, Any]]) -> list[str]:
    for name, record in keys.items():
        documents.put(S.KEYS, name, S.revoked_key(record))
    return list(keys)


def delete_tenant_data(store: Store, tenant: str) -> list[str]:
    """Remove the tenant's points, its marks on global points and its audit log, and revoke its API keys, under its
    fence (store.fences): edits under way finish first, those that come meanwhile wait. The names of the keys it
    revoked."""
    documents = store.documents()
    with store.tenant_deletion(tenant):
        if tenant not in tenant_counts(store):  # its points, marks (live or in tombstones), audit log or live keys
            raise NotFoundError(f"no tenant {tenant!r}: it has no skills, sentences, hide marks, audit log or live "
                                "keys")
        # The keys first: a key left live would edit the tenant back into being after its deletion, or read a later
        # tenant of the same name (the service checks an edit's key again once it holds the fence).
        revoked = _revoke(documents, _live_keys(documents, tenant))
        for collection in S.COLLECTIONS:
            # In chunks, not one delete by filter: the embedded engine answers no query while it deletes, and a
            # tenant of 50,000 sentences held every other tenant's mapping for 0.6 s.
            while ids := [r.id for r in islice(store.scroll(collection, where={S.F_TENANT: tenant}, payload=False,
                                                            batch=_DELETE_CHUNK), _DELETE_CHUNK)]:
                store.delete(collection, ids)
            key = S.hide_key(tenant)
            marked = [r.id for r in store.scroll(collection, where={key: tenant}, payload=False)]
            for start in range(0, len(marked), 1000):
                store.delete_payload(collection, marked[start : start + 1000], [key])
        _forget(documents, tenant, _removed_marks(documents, tenant))  # read again: a removal may have come since
        documents.clear_log(tenant_audit(tenant))
        # And again at the end: a key created meanwhile (`keys create` takes no fence, and may run in another
        # process) was made for the tenant being deleted, so it goes with it; one created after this belongs to the
        # next tenant of the name.
        revoked += _revoke(documents, _live_keys(documents, tenant))
    return revoked
