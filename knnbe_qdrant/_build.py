"""Filling a store: skills and labelled sentences in, points out. Resumable and idempotent by construction:
point ids are deterministic, and points already stored are neither re-encoded nor rewritten."""

from __future__ import annotations

import contextlib
import getpass
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from . import _schema as S
from ._data import DEFAULT_MEMORY_SOURCES, LabelledSentence, Skill, default_memory, load_taxonomy
from ._errors import InvalidInputError, StoreError
from ._schema import Manifest
from ._text import MAX_SOURCE, check_text
from .encoding import Encoder
from .store.base import Store

SKILL_TEXTS: dict[str, Callable[[Skill], str]] = {
    "label": lambda s: s.label,
    "label_description": lambda s: f"{s.label}. {s.description}" if s.description else s.label,
}
_CHUNK = 4096


@dataclass(frozen=True)
class TextPoint:
    """A point to store: its id, the text its vector is the embedding of, and its payload."""

    id: str
    text: str
    payload: dict[str, Any]


BUILDER = "knnbe-qdrant build"
"""`created_by` of the points a build makes from its sources: a rebuild makes them anew and carries only the others
(_carry), so no curator may write under this name."""


ENV_USER = "KNNBE_USER"


def curator_name(user: str | None, *, fallback: bool = True) -> str:
    """The name a curator's points record as `created_by`: `user`, else (with `fallback`) $KNNBE_USER, else the
    login name; checked (a visible text, short, and not the builder's)."""
    what = f"the user (--user, {ENV_USER} or the login name)" if fallback else "the curator's user"
    if fallback:
        user = user or os.environ.get(ENV_USER) or _login_name()
    user = check_text(user, what, max_chars=MAX_SOURCE)
    if user == BUILDER:
        raise InvalidInputError(f"{what}: {BUILDER!r} is reserved for the points a build makes from its sources (a "
                                "rebuild would not carry a curator's points made under it)")
    return user


def _login_name() -> str:
    # A container run under a uid with no passwd entry and no USER (OpenShift's way) has no login name: getpass
    # raised KeyError, and no curator, the service's included, could start.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def skill_payload(skill: Skill, tenant: str) -> dict[str, Any]:
    return {
        S.F_CREATED_BY: BUILDER,
        S.F_CREATED_AT: S.utc_now(),
        S.F_SOURCE: "taxonomy",
        S.F_TENANT: tenant,
        S.F_SKILL_ID: skill.id,
        S.F_LABEL: skill.label,
        S.F_ALT_LABELS: list(skill.alt_labels),
        S.F_DESCRIPTION: skill.description,
        "skill_type": skill.skill_type,
        S.F_TAXONOMY: skill.taxonomy,
        S.F_TAXONOMY_VERSION: skill.taxonomy_version,
    }


def memory_payload(sentence: LabelledSentence, tenant: str, created_at: str) -> dict[str, Any]:
    return {
        S.F_TENANT: tenant,
        S.F_TEXT: sentence.text,
        S.F_SKILL_ID: sentence.skill_id,
        S.F_SOURCE: sentence.source,
        S.F_CREATED_AT: created_at,
        S.F_CREATED_BY: BUILDER,
    }


def upsert_missing(
    store: Store, collection: str, items: Sequence[TextPoint], encoder: Encoder, *, progress: bool, desc: str,
    guard: Callable[[int], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> int:
    """Encode and store the items whose point is not stored yet; each distinct text is encoded once. Each write is
    made inside `guard(n)`, n the points it adds (an import's tenant fence and quota: held for the write, not for the
    encoding before it).

    Returns how many points were written.
    """
    # Sorting by length makes the encoder's batches pad little; the order of upserts does not matter.
    items = sorted(items, key=lambda it: len(it.text))
    written = 0
    with tqdm(total=len(items), desc=desc, unit="pt", disable=not progress, smoothing=0.05) as bar:
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            stored = {r.id for r in store.retrieve(collection, [it.id for it in chunk], payload=False)}
            todo = [it for it in chunk if it.id not in stored]
            if todo:
                texts = list(dict.fromkeys(it.text for it in todo))
                vectors = encoder.encode(texts)
                row = {t: i for i, t in enumerate(texts)}
                with guard(len(todo)):
                    store.upsert(collection, [it.id for it in todo], vectors[[row[it.text] for it in todo]],
                                 [it.payload for it in todo])
                written += len(todo)
            bar.update(len(chunk))
    return written


def build_store(
    store: Store,
    encoder: Encoder,
    *,
    skills: Sequence[Skill] | None = None,
    memory: Sequence[LabelledSentence] | None = None,
    memory_sources: Sequence[str] = DEFAULT_MEMORY_SOURCES,
    skill_text: str = "label",
    tenant: str = S.GLOBAL_TENANT,
    progress: bool = True,
) -> Manifest:
    """Build (or finish building) a store: skills from the taxonomy, memory from the given labelled sentences.

    Defaults: the shipped ESCO v1.1.0 skills, and memory from `memory_sources`.
    """
    started = time.perf_counter()
    skills = list(skills) if skills is not None else load_taxonomy()
    memory = list(memory) if memory is not None else default_memory(skills, memory_sources)
    to_text = SKILL_TEXTS[skill_text]
    sources = list(dict.fromkeys(m.source for m in memory))
    manifest = store.initialize(
        encoder.name,
        encoder.dimension,
        migrations=S.all_migrations_applied(),  # a new store is born at the latest schema
        skill_text=skill_text,
        sources={"taxonomy": f"{skills[0].taxonomy} {skills[0].taxonomy_version}", "memory": ",".join(sources)},
    )
    # Building again with more sources (a new default memory source) adds their sentences and never removes any:
    # the manifest names them all.
    stored = [s for s in manifest.sources.get("memory", "").split(",") if s]
    if not set(sources) <= set(stored):
        store.update_manifest(sources={**manifest.sources, "memory": ",".join(dict.fromkeys([*stored, *sources]))})
    manifest = store.manifest
    if manifest.skill_text != skill_text:
        raise StoreError(
            f"{store.describe()} embeds skills as {manifest.skill_text!r}, not {skill_text!r}; "
            "build a new store to change how skills are embedded"
        )
    now = S.utc_now()
    skill_items = [TextPoint(S.skill_point_id(tenant, s.id), to_text(s), skill_payload(s, tenant)) for s in skills]
    memory_items = [
        TextPoint(S.memory_point_id(tenant, m.skill_id, m.text), m.text, memory_payload(m, tenant, now)) for m in memory
    ]
    upsert_missing(store, S.SKILLS, skill_items, encoder, progress=progress, desc="skills")
    upsert_missing(store, S.MEMORY, memory_items, encoder, progress=progress, desc="memory")
    if progress:
        print("building the HNSW indexes ...", flush=True)
    store.optimize()
    counts = {c: store.count(c) for c in S.COLLECTIONS}
    return store.mark_ready(counts=counts, build_seconds=round(time.perf_counter() - started, 1))


def rebuild_store(store: Store, encoder: Encoder, *, carry: Callable[[Store, Store], Any] | None = None,
                  **build: Any) -> Manifest:
    """`build --force`: a fresh store built beside this one, which serves untouched until the new one is complete
    and swaps in atomically. Killed half-way, the old store still serves; run again, the rebuild resumes. Every
    argument is checked (the model loaded, the taxonomy read) before this is called, so a bad one changes nothing.

    `carry(old, new)` runs after the new store is built and before the swap: `_carry.carry_edits` brings every
    curated point over (the command line passes it unless --discard-edits)."""
    if not store.exists():
        return build_store(store, encoder, **build)
    target = store.rebuild_view()
    try:
        build_store(target, encoder, **build)
        # Edits wait from the carry to the swap: one made in between was carried by no one, and the swap lost it.
        with store.edits_paused() if carry is not None else contextlib.nullcontext() as paused:
            if carry is not None:
                carry(store, target)
                target.mark_ready(counts={c: target.count(c) for c in S.COLLECTIONS})
            if paused is not None:
                paused.check()  # on a server, a pause whose lease lapsed let edits in that the carry missed
            store.promote(target)
    finally:
        target.close()
    return store.manifest
