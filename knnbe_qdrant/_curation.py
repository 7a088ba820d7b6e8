"""Live curation of skills and memory, per tenant: plain upserts and payload edits, visible to the next `map`.

Who sees what is in _tenancy; skill edits and what every edit shares in _skill_curation. A tenant edits only its own
layer; on the global layer it can only hide a skill or a sentence for itself (a payload key of its own on that point,
`_schema.hide_key`), which changes nothing for anyone else.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import _schema as S
from . import _text as T
from ._build import memory_payload
from ._carry import record_removal
from ._data import LabelledSentence
from ._errors import NotFoundError
from ._importing import ImportReport, store_rows
from ._labelled import check_readable, hf_rows, read_labelled, write_labelled
from ._quota import forget, released, room_for
from ._skill_curation import SkillCurator, check_cursor, fenced_edit, own_layer, page_of
from ._tenancy import delete_tenant_data, marks_of_removed, tenant_counts, visible_memory, visible_payload
from ._text import check_text
from .store.base import Where, vectors_of


class Curator(SkillCurator):
    """Skills and memory edits on a store. `encoder` must be the store's model (it is checked); it is loaded on
    first need when not given."""

    # ---- memory ---------------------------------------------------------------------------------------------
    @fenced_edit
    def add_sentence(self, text: str, skill: str, *, tenant: str | None = None, source: str = "curator") -> bool:
        """Teach the memory that `text` expresses `skill`. Returns False when it was already stored."""
        self._check_editable()
        text = self._check_text(text)
        source = check_text(source, "the source", max_chars=T.MAX_SOURCE)
        skill_id = self.resolve_skill(skill, tenant)[S.F_SKILL_ID]
        owner = own_layer(tenant)
        point = S.memory_point_id(owner, skill_id, text)
        vector = self.encoder.encode([text])
        with self.store.item_lock("memory", text):
            if self.store.retrieve(S.MEMORY, [point], payload=False):
                return False
            payload = {**memory_payload(LabelledSentence(text, skill_id, source), owner, S.utc_now()),
                       **self._provenance(source)}
            payload.update(self._hidden_again(owner, point))
            with room_for(self.store, self.quota, owner, S.MEMORY, 1):
                self.store.upsert(S.MEMORY, [point], vector, [payload])
        return True

    @fenced_edit
    def remove_sentence(self, text: str, skill: str, *, tenant: str | None = None) -> str:
        """Remove a sentence of one's own layer, or hide a global one for this tenant. Returns "removed"/"hidden"."""
        self._check_editable()
        skill_id = self.resolve_skill(skill, tenant, include_retired=True)[S.F_SKILL_ID]
        owner = own_layer(tenant)
        text = self._stored_text(text, skill_id, owner)
        own_point = S.memory_point_id(owner, skill_id, text)
        with self.store.item_lock("memory", text):  # a relabel of this sentence is either before or after
            if found := self.store.retrieve(S.MEMORY, [own_point]):
                if owner == S.GLOBAL_TENANT:  # a rebuild from the sources would make it anew: it removes it again
                    record_removal(self.store, S.MEMORY, own_point, self.user, found[0].payload)
                self.store.delete(S.MEMORY, [own_point])
                released(self.store, owner, S.MEMORY, 1)
                return "removed"
            global_point = S.memory_point_id(S.GLOBAL_TENANT, skill_id, text)
            if owner != S.GLOBAL_TENANT and self.store.retrieve(S.MEMORY, [global_point], payload=False):
                self._hide(S.MEMORY, global_point, owner)
                return "hidden"
        raise NotFoundError(f"no memory sentence {text!r} labelled {skill_id!r} visible to this tenant")

    @fenced_edit
    def reinstate_sentence(self, text: str, skill: str, *, tenant: str | None = None) -> str:
        """Undo a tenant's hiding of a global sentence (`remove_sentence` answered "hidden"): it votes for the tenant
        again. Returns "unhidden", or "already active" (the tenant sees it: a retry that went through)."""
        self._check_editable()
        skill_id = self.resolve_skill(skill, tenant, include_retired=True)[S.F_SKILL_ID]
        owner = own_layer(tenant)
        text = self._stored_text(text, skill_id, owner)
        point = S.memory_point_id(S.GLOBAL_TENANT, skill_id, text)
        with self.store.item_lock("memory", text):
            if self.store.retrieve(S.MEMORY, [S.memory_point_id(owner, skill_id, text)], payload=False):
                return "already active"
            found = self.store.retrieve(S.MEMORY, [point])  # a global sentence, seen by a tenant (not the owner)
            if found and S.hide_key(owner) in found[0].payload:
                self.store.delete_payload(S.MEMORY, [point], [S.hide_key(owner)])
                return "unhidden"
            if found:
                return "already active"
        raise NotFoundError(f"no global memory sentence {text!r} labelled {skill_id!r} hidden by this tenant (a "
                            "removed sentence of one's own layer is gone: add it again)")

    @fenced_edit
    def relabel(self, text: str, skill: str, new_skill: str, *, tenant: str | None = None) -> str:
        """Move a sentence to another skill, reusing its stored vector (no re-encoding). A tenant relabelling a
        global sentence hides the global one and gets its own copy under the new skill.

        Returns "relabelled", or "already relabelled" when the sentence is no longer under `skill` for this tenant
        but is in its layer under `new_skill` (a retry of a relabel that went through), or "unchanged" when the two
        name one skill."""
        self._check_editable()
        old_id = self.resolve_skill(skill, tenant, include_retired=True)[S.F_SKILL_ID]
        new_id = self.resolve_skill(new_skill, tenant)[S.F_SKILL_ID]
        owner = own_layer(tenant)
        text = self._stored_text(text, old_id, owner)
        # Under the sentence's lock: of two relabels (or a relabel and a removal) at once, the second finds the
        # sentence where the first left it.
        with self.store.item_lock("memory", text):
            return self._relabel(text, old_id, new_id, owner)

    def _relabel(self, text: str, old_id: str, new_id: str, owner: str) -> str:
        source_point = None
        for layer in (owner, S.GLOBAL_TENANT):
            found = self.store.retrieve(S.MEMORY, [S.memory_point_id(layer, old_id, text)], with_vectors=True)
            if found and (layer == owner or S.hide_key(owner) not in found[0].payload):
                source_point = found[0]
                break
        if source_point is None:
            if self.store.retrieve(S.MEMORY, [S.memory_point_id(owner, new_id, text)], payload=False):
                return "already relabelled"
            raise NotFoundError(f"no memory sentence {text!r} labelled {old_id!r} visible to this tenant")
        if old_id == new_id:  # a tenant's copy of a global sentence under its own skill would only use its quota
            return "unchanged"
        # A tenant's copy starts unhidden; a global relabel keeps the tenants' marks (they hid this sentence).
        payload = {k: v for k, v in source_point.payload.items()
                   if not k.startswith(S.HIDE_PREFIX) or owner == S.GLOBAL_TENANT}
        payload.update({S.F_TENANT: owner, S.F_SKILL_ID: new_id, S.F_UPDATED_AT: S.utc_now(),
                        "relabelled_by": self.user, "relabelled_from": old_id})
        # New point first, then the old one goes: a crash in between leaves both, never neither.
        new_point = S.memory_point_id(owner, new_id, text)
        payload.update(self._hidden_again(owner, new_point))
        copied = source_point.payload[S.F_TENANT] != owner  # a tenant's own copy of a global sentence: one more
        with room_for(self.store, self.quota, owner, S.MEMORY, int(copied)):
            self.store.upsert(S.MEMORY, [new_point], vectors_of([source_point]), [payload])
        if source_point.payload[S.F_TENANT] == owner:
            if old_id != new_id:
                if owner == S.GLOBAL_TENANT:  # marks tenants set on the old point since it was read come along
                    late = {k: v for r in self.store.retrieve(S.MEMORY, [source_point.id])
                            for k, v in r.payload.items() if k.startswith(S.HIDE_PREFIX) and k not in payload}
                    if late:
                        self.store.set_payload(S.MEMORY, [new_point], late)
                self.store.delete(S.MEMORY, [source_point.id])
                if owner == S.GLOBAL_TENANT:
                    record_removal(self.store, S.MEMORY, source_point.id, self.user)
        else:
            self._hide(S.MEMORY, source_point.id, owner)
        return "relabelled"

    def list_memory(self, skill: str | None = None, *, tenant: str | None = None,
                    own_only: bool = False) -> Iterator[dict[str, Any]]:
        return (row for _, row in self._memory_rows(skill, tenant, own_only, None, 1000))

    def page_memory(self, limit: int, skill: str | None = None, *, tenant: str | None = None, own_only: bool = False,
                    after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """At most `limit` of the sentences `list_memory` gives, from the cursor `after` on, and the next page's
        cursor (None: this is the last); as `page_skills`."""
        return page_of(self._memory_rows(skill, tenant, own_only, after, limit + 1), limit)

    def _memory_rows(self, skill: str | None, tenant: str | None, own_only: bool, after: str | None,
                     batch: int) -> Iterator[tuple[str, dict[str, Any]]]:
        where = visible_memory(tenant)
        must = dict(where.must)
        if own_only:
            must[S.F_TENANT] = own_layer(tenant)
        if skill is not None:
            must[S.F_SKILL_ID] = self.resolve_skill(skill, tenant, include_retired=True)[S.F_SKILL_ID]
        for r in self.store.scroll(S.MEMORY, where=Where(must=must, must_not=where.must_not), batch=min(batch, 1000),
                                   start=check_cursor(after)):
            yield r.id, visible_payload(r.payload, tenant)

    def import_file(self, path: str | Path, *, tenant: str | None = None, source: str | None = None,
                    progress: bool = False, chunk: int = 4096) -> ImportReport:
        """Store the labelled sentences of a JSONL or CSV file (`text`, `skill`, optional `source`).

        Streams the file in chunks (memory stays bounded whatever its size). Every bad row (not JSON, a value that
        is not text, an empty field, an unknown skill) is reported by line number and stored not at all; every
        good row is stored. A file that cannot be read to its end (not UTF-8, broken CSV quoting) is refused before
        anything is stored. Re-running an import (after it was killed, say) stores only what is missing: point ids
        are deterministic, so nothing is duplicated or lost."""
        check_readable(path)
        return self.import_rows(read_labelled(path), str(path), tenant=tenant,
                                source=source or f"import:{Path(path).name}", progress=progress, chunk=chunk)

    def import_hf(self, name: str, *, split: str = "train", text_column: str = "sentence",
                  skill_column: str = "skill", tenant: str | None = None, source: str | None = None,
                  progress: bool = False, chunk: int = 4096) -> ImportReport:
        """Store the labelled sentences of a Hugging Face dataset (a hub name, which needs internet, or a local
        dataset directory), e.g. TechWolf/Synthetic-ESCO-skill-sentences: `skill` holds ESCO preferred labels,
        which resolve like any skill reference. Rows are numbered from 1 in error messages."""
        numbered = hf_rows(name, split, text_column, skill_column)
        return self.import_rows(numbered, f"{name}[{split}] row", tenant=tenant, source=source or f"hf:{name}",
                                progress=progress, chunk=chunk)

    def import_rows(self, rows: Iterable[tuple[int, dict[str, str], str | None]], origin: str, *,
                    tenant: str | None, source: str, progress: bool = False, chunk: int = 4096) -> ImportReport:
        """Store (line number, {text, skill[, source]}, problem) rows, where a row with a problem is reported and
        skipped; errors read `origin:line: problem`. If storing fails part-way, the error says how many rows were
        stored before it (running the same import again stores the rest)."""
        self._check_editable()
        return store_rows(self.store, lambda: self.encoder, lambda ref: self.resolve_skill(ref, tenant)[S.F_SKILL_ID],
                          self._provenance, rows, origin, owner=own_layer(tenant), source=source, progress=progress,
                          chunk=chunk, fence=lambda: self.editing(tenant), quota=self.quota)

    def export(self, path: str | Path, *, tenant: str | None = None, skill: str | None = None) -> int:
        """Write the tenant's own sentences (the global layer's without a tenant) as JSONL, or CSV by suffix."""
        rows = [
            {"text": p[S.F_TEXT], "skill": p[S.F_SKILL_ID], "source": p.get(S.F_SOURCE, "")}
            for p in self.list_memory(skill, tenant=tenant, own_only=True)
        ]
        return write_labelled(path, rows)

    # ---- tenants --------------------------------------------------------------------------------------------
    def tenants(self) -> dict[str, dict[str, int]]:
        return tenant_counts(self.store)  # each tenant's own points per collection, and how many global ones it hid

    def delete_tenant(self, tenant: str) -> list[str]:
        """Remove exactly this tenant's data (skills, sentences, marks on hidden global points, its own audit log) and
        revoke its API keys: a tenant made later under the name starts with none of them. The keys revoked."""
        tenant = S.check_tenant(tenant)
        self._check_editable()
        try:
            return delete_tenant_data(self.store, tenant)
        finally:
            forget(self.store, tenant)

    # ---- helpers --------------------------------------------------------------------------------------------
    def _hidden_again(self, owner: str, point: str) -> dict[str, str]:
        """The hide marks a global point made again (added, or relabelled onto) gets back from its removal's tombstone:
        the tenants that had hidden it keep it hidden. None for a tenant's own point."""
        if owner != S.GLOBAL_TENANT:
            return {}
        return marks_of_removed(self.store.documents().all(S.TOMBSTONES), point)

    @staticmethod
    def _check_text(text: str) -> str:
        return check_text(text, "the memory sentence", max_chars=T.MAX_MEMORY_TEXT)

    def _stored_text(self, text: str, skill_id: str, owner: str) -> str:
        """The sentence checked and normalized, or as given where only that form is stored under `skill_id` (in the
        layer or the global one): a point stored before texts were normalized (NFC) keeps the spelling it has."""
        checked = self._check_text(text)
        given = text.strip()
        if given == checked:
            return checked
        def stored(t: str) -> bool:
            return bool(self.store.retrieve(S.MEMORY, [S.memory_point_id(layer, skill_id, t)
                                                       for layer in {owner, S.GLOBAL_TENANT}], payload=False))
        return given if not stored(checked) and stored(given) else checked
