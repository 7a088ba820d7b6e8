"""Who sees what: the global layer (ESCO and the default memory) plus, for a tenant, its own skills and memory,
minus what it hid. Every read of the mapper and of the curator goes through these filters."""

from __future__ import annotations

from typing import Any

from . import _schema as S
from .store.base import Where


def layers(tenant: str | None) -> list[str]:
    if tenant is None or tenant == S.GLOBAL_TENANT:
        return [S.GLOBAL_TENANT]
    return [S.GLOBAL_TENANT, S.check_tenant(tenant)]


def visible_skills(tenant: str | None) -> Where:
    must_not: dict = {S.F_STATUS: S.RETIRED}
    if tenant and tenant != S.GLOBAL_TENANT:
        must_not[S.F_HIDDEN_FOR] = tenant
    return Where(must={S.F_TENANT: layers(tenant)}, must_not=must_not)


def visible_memory(tenant: str | None) -> Where:
    # Sentences of retired skills still come back; the mapper drops their votes with the skill.
    must_not = {S.F_HIDDEN_FOR: tenant} if tenant and tenant != S.GLOBAL_TENANT else {}
    return Where(must={S.F_TENANT: layers(tenant)}, must_not=must_not)


def visible_payload(payload: dict[str, Any], tenant: str | None) -> dict[str, Any]:
    """A point's payload as `tenant` may read it: without `hidden_for`, which names other tenants (and which, for a
    point the tenant can see at all, never names the tenant itself). The global view keeps it."""
    if tenant is None or tenant == S.GLOBAL_TENANT:
        return payload
    return {k: v for k, v in payload.items() if k != S.F_HIDDEN_FOR}


def skill_is_visible(payload: dict, tenant: str | None) -> bool:
    return (
        payload.get(S.F_TENANT) in layers(tenant)
        and payload.get(S.F_STATUS) != S.RETIRED
        and (tenant is None or tenant not in (payload.get(S.F_HIDDEN_FOR) or ()))
    )
