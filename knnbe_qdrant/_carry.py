"""What `build --force` carries from the store it replaces into the one it built: every curated point, re-encoded
with the new build's model, so that no tenant's data and no curator's edit is lost by a rebuild.

Curated, on the old store:
- every tenant's own skills and sentences, and the global layer's that a curator added (not the builder);
- on points the builder made: a retirement, a new label or description (`updated_at`), tenants' hide marks;
- a global point a curator removed or moved (relabelled) away: recorded then as a tombstone (`_schema.TOMBSTONES`), and
  removed again from the new build, which made it anew from the sources.

Idempotent: a rebuild killed after it and run again carries the same points to the same ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from . import _schema as S
from ._build import BUILDER, SKILL_TEXTS
from ._data import Skill
from ._errors import KnnbeError, StoreError
from .encoding import Encoder
from .store.base import Record, Store

_CHUNK = 512


@dataclass
class CarryReport:
    points: dict[str, int] = field(default_factory=lambda: {S.SKILLS: 0, S.MEMORY: 0})
    marks: int = 0
    edits: int = 0
    removals: int = 0
    lost: list[str] = field(default_factory=list)
    """Edits of builder points the new build no longer has (its taxonomy dropped the skill): nothing to carry to."""

    def summary(self) -> str:
        parts = [f"{self.points[S.SKILLS]} curated skills", f"{self.points[S.MEMORY]} curated sentences",
                 f"{self.edits} edits of built points", f"{self.marks} hide marks", f"{self.removals} removals"]
        text = "carried " + ", ".join(parts)
        if self.lost:
            text += f"; {len(self.lost)} edits were of points the new build lacks ({', '.join(self.lost[:3])} ...)"
        return text


def record_removal(store: Store, collection: str, point_id: str, user: str, payload: dict[str, Any] | None = None
                   ) -> None:
    """Remember that a curator removed a global point, so that a rebuild from the sources removes it again, and which
    tenants had hidden it (its `payload`'s marks), so that adding it again hides it from them again
    (`_tenancy.marks_of_removed`)."""
    hidden = S.hidden_tenants(payload or {})
    store.documents().put(S.TOMBSTONES, point_id, {"collection": collection, "at": S.utc_now(), "by": user,
                                                   **({S.F_HIDDEN_FOR: hidden} if hidden else {})})


def _curated(payload: dict[str, Any]) -> bool:
    return (payload.get(S.F_TENANT) != S.GLOBAL_TENANT or payload.get(S.F_CREATED_BY) != BUILDER
            or S.F_UPDATED_AT in payload or payload.get(S.F_STATUS) == S.RETIRED
            or any(k.startswith(S.HIDE_PREFIX) for k in payload))


def _own_point(payload: dict[str, Any]) -> bool:
    """A point the sources do not make: a tenant's, a curator's, or a global sentence a curator moved."""
    return (payload.get(S.F_TENANT) != S.GLOBAL_TENANT or payload.get(S.F_CREATED_BY) != BUILDER
            or "relabelled_from" in payload)


def _text_of(collection: str, payload: dict[str, Any], skill_text: str) -> str:
    if collection == S.MEMORY:
        return str(payload[S.F_TEXT])
    return SKILL_TEXTS[skill_text](Skill(id=payload[S.F_SKILL_ID], label=payload[S.F_LABEL],
                                         description=payload.get(S.F_DESCRIPTION) or ""))


def _read_all(store: Store, collection: str) -> Iterator[Record]:
    try:
        yield from store.scroll(collection)
    except KnnbeError as exc:
        raise StoreError(f"cannot read the curated data of {store.describe()} to carry it into the rebuild ({exc}); "
                         "restore it from a backup with `knnbe-qdrant restore`, or rebuild without it: "
                         "`knnbe-qdrant build --force --discard-edits` (every tenant's data and curator edit is lost)"
                         ) from exc


def carry_edits(old: Store, new: Store, encoder: Encoder, *, progress: bool = False) -> CarryReport:
    """Carry every curated point of `old` into `new` (see the module's docstring)."""
    report = CarryReport()
    skill_text = new.manifest.skill_text
    tombstones = old.documents().all(S.TOMBSTONES)
    for collection in S.COLLECTIONS:
        gone = [pid for pid, t in tombstones.items() if t.get("collection") == collection]
        present = {r.id for start in range(0, len(gone), 1000)
                   for r in new.retrieve(collection, gone[start : start + 1000], payload=False)}
        if present:
            new.delete(collection, sorted(present))
        report.removals += len(present)
    for collection in S.COLLECTIONS:
        pending: list[Record] = []
        with tqdm(desc=f"carry {collection}", unit="pt", disable=not progress) as bar:
            for record in _read_all(old, collection):
                if _curated(record.payload):
                    pending.append(record)
                if len(pending) >= _CHUNK:
                    _carry_chunk(new, collection, pending, encoder, skill_text, report)
                    bar.update(len(pending))
                    pending = []
            if pending:
                _carry_chunk(new, collection, pending, encoder, skill_text, report)
                bar.update(len(pending))
    return report


def _carry_chunk(new: Store, collection: str, records: list[Record], encoder: Encoder, skill_text: str,
                 report: CarryReport) -> None:
    whole = [r for r in records if _own_point(r.payload)]
    edited = [r for r in records if not _own_point(r.payload)]
    if whole:  # a tenant's or a curator's own point: all of it, re-encoded with the new model
        texts = [_text_of(collection, r.payload, skill_text) for r in whole]
        new.upsert(collection, [r.id for r in whole], encoder.encode(texts), [r.payload for r in whole])
        report.points[collection] += len(whole)
    built = {r.id: r.payload for r in new.retrieve(collection, [r.id for r in edited])}
    for r in edited:
        if r.id not in built:
            report.lost.append(f"{collection} {r.payload.get(S.F_SKILL_ID)}")
            continue
        # A built point: only what curators changed on it; the rest stays as the new sources made it.
        changes = {k: v for k, v in r.payload.items() if k.startswith(S.HIDE_PREFIX)}
        report.marks += len(changes)
        if S.F_UPDATED_AT in r.payload or r.payload.get(S.F_STATUS) == S.RETIRED:
            fields = (S.F_UPDATED_AT, S.F_STATUS, S.F_LABEL, S.F_DESCRIPTION, S.F_REVISION)
            changes.update({k: r.payload[k] for k in fields if k in r.payload})
            report.edits += 1
            label = r.payload.get(S.F_LABEL)
            if collection == S.SKILLS and label != built[r.id].get(S.F_LABEL):
                merged = {**built[r.id], **changes}
                new.update_vectors(collection, [r.id], encoder.encode([_text_of(collection, merged, skill_text)]))
        if changes:
            new.set_payload(collection, [r.id], changes)
