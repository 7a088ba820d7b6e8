"""Who sees what: the global layer (ESCO and the default memory) plus, for a tenant, its own skills and memory,
minus what it hid. Every read of the mapper and of the curator goes through these filters."""

from __future__ import annotations

from typing import Any, TypeGuard

from . import _schema as S
from .store.base import Where


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
