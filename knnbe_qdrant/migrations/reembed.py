"""Changing a store's embedding model: re-encode every skill and sentence into a new generation of collections,
swap to it atomically, keep the old one for `rollback`."""

from __future__ import annotations

from tqdm.auto import tqdm

from .. import _schema as S
from .._build import SKILL_TEXTS, TextPoint, upsert_missing
from .._data import Skill
from .._errors import InvalidInputError, StoreError
from ..encoding import Encoder
from ..store.base import Store, Where


def reembed(store: Store, encoder: Encoder, *, dry_run: bool = False, progress: bool = True) -> list[str]:
    """Move the store to another embedding model: re-encode every skill and sentence into a new generation of
    collections, then swap to it atomically, keeping the old generation for `rollback`. Resumable: re-running
    after a crash re-encodes only what the new generation lacks."""
    manifest = store.manifest
    if manifest.model == encoder.name and not manifest.pending_reembed:
        raise InvalidInputError(f"the store already uses {encoder.name}")
    pending_job = manifest.pending_reembed or {}
    if pending_job and pending_job.get("model") != encoder.name:
        raise StoreError(
            f"an unfinished re-embedding to {pending_job.get('model')} is pending: finish it (migrate --model "
            f"{pending_job.get('model')}) before starting another"
        )
    generation = pending_job.get("generation") or max(manifest.generation, (manifest.previous or {}).get(
        "generation", 0)) + 1
    plan = [
        f"re-embed {store.count(S.SKILLS)} skills and {store.count(S.MEMORY)} memory sentences with {encoder.name} "
        f"({encoder.dimension}-d) into generation {generation}",
        f"swap the store from generation {manifest.generation} ({manifest.model}) to generation {generation}; keep "
        f"generation {manifest.generation} for rollback",
    ]
    if dry_run:
        return plan
    # Set with every edit paused: an edit that passed its check of the flag before finishes first, the next ones
    # see it (and are refused), so that no edit goes to the old collections after the copy read them.
    with store.edits_paused():
        manifest = store.update_manifest(pending_reembed={"model": encoder.name, "generation": generation})
    target = store.at_generation(generation)
    try:
        target._create_collections(encoder.dimension)
        to_text = SKILL_TEXTS[manifest.skill_text]
        everything = Where()
        for collection in S.COLLECTIONS:
            items = []
            for record in tqdm(store.scroll(collection, where=everything), desc=f"reading {collection}",
                               disable=not progress, total=store.count(collection), unit="pt"):
                p = record.payload
                text = p[S.F_TEXT] if collection == S.MEMORY else to_text(
                    Skill(id=p[S.F_SKILL_ID], label=p[S.F_LABEL], description=p.get(S.F_DESCRIPTION, ""))
                )
                items.append(TextPoint(record.id, text, p))
            upsert_missing(target, collection, items, encoder, progress=progress, desc=f"re-embedding {collection}")
        target.optimize()
    finally:
        target.close()
    old = {"generation": manifest.generation, "model": manifest.model, "dimension": manifest.dimension}
    store.swap_to(
        generation, model=encoder.name, dimension=encoder.dimension, previous=old, pending_reembed=None,
        migrations=[*manifest.migrations, {"id": f"reembed:{encoder.name}:g{generation}", "applied_at": S.utc_now()}],
    )
    return plan


def edits_since(store: Store, moment: str) -> int:
    """How many points were created or changed after `moment` (an ISO time): curation since a swap."""
    fields = [S.F_CREATED_AT, S.F_UPDATED_AT]
    return sum(1 for collection in S.COLLECTIONS for r in store.scroll(collection, payload=fields)
               if max(str(r.payload.get(S.F_CREATED_AT) or ""), str(r.payload.get(S.F_UPDATED_AT) or "")) > moment)


def rollback(store: Store, *, dry_run: bool = False, discard_edits: bool = False) -> list[str]:
    """Swap back to the generation (and model) served before the last re-embedding. Edits made since that swap live
    only in the current generation: rolling back would lose them, so it is refused unless `discard_edits`."""
    manifest = store.manifest
    if not manifest.previous:
        raise StoreError(f"{store.describe()} has no previous generation to roll back to")
    prev = manifest.previous
    swapped = next((m["applied_at"] for m in reversed(manifest.migrations)
                    if str(m.get("id", "")).startswith(("reembed:", "rollback:"))), None)
    if swapped and not discard_edits:
        edited = edits_since(store, swapped)
        if edited:
            raise StoreError(f"{edited} skills or sentences were added or changed since the swap at {swapped}; rolling "
                             "back would lose them. Export them first (`memory export`), or pass --discard-edits")
    plan = [f"swap from generation {manifest.generation} ({manifest.model}) back to generation "
            f"{prev['generation']} ({prev['model']})"]
    if not dry_run:
        current = {"generation": manifest.generation, "model": manifest.model, "dimension": manifest.dimension}
        store.swap_to(prev["generation"], model=prev["model"], dimension=prev["dimension"], previous=current,
                      migrations=[*manifest.migrations, {"id": f"rollback:g{prev['generation']}",
                                                         "applied_at": S.utc_now()}])
    return plan
