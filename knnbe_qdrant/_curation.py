"""Live curation of skills and memory, per tenant: plain upserts and payload edits, visible to the next `map`.

Who sees what is in _tenancy. A tenant edits only its own layer; on the global layer it can only hide a skill or a
sentence for itself (a payload key of its own on that point, `_schema.hide_key`), which changes nothing for anyone
else.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from . import _schema as S
from . import _text as T
from ._build import curator_name, memory_payload, skill_payload
from ._carry import record_removal
from ._data import LabelledSentence, Skill
from ._errors import ConflictError, InvalidInputError, NotFoundError, StoreError
from ._importing import ImportReport, store_rows
from ._labelled import check_readable, hf_rows, read_labelled, write_labelled
from ._tenancy import (
    delete_tenant_data,
    is_tenant,
    layers,
    skill_is_visible,
    tenant_counts,
    visible_memory,
    visible_payload,
    visible_skills,
)
from ._text import check_optional_text, check_text
from .encoding import Encoder
from .store.base import Store, Where, vectors_of
from .store.locks import LOCK_WAIT_S


def _own(tenant: str | None) -> str:
    return S.GLOBAL_TENANT if tenant in (None, S.GLOBAL_TENANT) else S.check_tenant(tenant)


F = TypeVar("F", bound=Callable[..., Any])


def _fenced(edit: F) -> F:
    """An edit of the layer its `tenant` keyword names, made under the fences of such an edit (Curator.editing)."""
    @functools.wraps(edit)
    def fenced(self: Curator, *args: Any, tenant: str | None = None, **kwargs: Any) -> Any:
        with self.editing(tenant):
            return edit(self, *args, tenant=tenant, **kwargs)
    return fenced  # type: ignore[return-value]


class Curator:
    """Skills and memory edits on a store. `encoder` must be the store's model (it is checked); it is loaded on
    first need when not given."""

    def __init__(self, store: Store, encoder: Encoder | None = None, *, user: str | None = None) -> None:
        store.check_ready()
        if encoder is not None:
            store.check_model(encoder.name, encoder.dimension)
        self.store = store
        # A list, so that copies (the service makes one per key, to record who edits) share the one encoder that
        # the first edit loads: each copy loading its own cost a model load per write.
        self._encoder: list[Encoder] = [encoder] if encoder is not None else []
        self._encoder_lock = threading.Lock()
        self._user = curator_name(user)
        self._registered: set[str] = set()  # tenants this curator knows are in S.HIDERS
        self.fence_wait = LOCK_WAIT_S  # how long an edit waits for a deletion or a rebuild's carry, then ConflictError

    @property
    def user(self) -> str:  # the name this curator's points record as `created_by`
        return self._user

    @user.setter
    def user(self, name: str) -> None:  # checked as when made: the builder's name set later was lost by a rebuild
        self._user = curator_name(name, fallback=False)

    @property
    def encoder(self) -> Encoder:
        with self._encoder_lock:
            if not self._encoder:
                self._encoder.append(Encoder(self.store.manifest.model, precision="fp32"))  # stored: full precision
            return self._encoder[0]

    def editing(self, tenant: str | None) -> contextlib.AbstractContextManager[int]:
        """Hold the fences of an edit of `tenant`'s layer (store.fences): nothing begun before a deletion of the
        tenant or a rebuild's carry lands after it. Every edit holds them; the service and the command line hold
        them around an edit and its audit entry, so that a deleted tenant's log stays empty."""
        return self.store.edit_fence(S.check_tenant(tenant) if is_tenant(tenant) else None, self.fence_wait)

    # ---- skills ---------------------------------------------------------------------------------------------
    def resolve_skill(self, ref: str, tenant: str | None = None, *, include_retired: bool = False) -> dict[str, Any]:
        """The payload of the skill `ref` names for this tenant: a skill id, else an exact preferred label."""
        ref = check_text(ref, "the skill (its id or exact preferred label)", max_chars=T.MAX_SKILL_REF)
        where = Where(must={S.F_TENANT: layers(tenant)})
        for key in (S.F_SKILL_ID, S.F_LABEL):
            found = [
                r.payload for r in self.store.scroll(S.SKILLS, where=Where({**where.must, key: ref}), batch=16)
                if include_retired or skill_is_visible(r.payload, tenant)
            ]
            if len(found) > 1:  # the tenant's own skill shadows a global one of the same id or label
                own = [p for p in found if p[S.F_TENANT] == _own(tenant)]
                found = own if len(own) == 1 else found
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                ids = ", ".join(sorted(p[S.F_SKILL_ID] for p in found))
                raise InvalidInputError(f"{ref!r} names several skills ({ids}): use the skill id")
        who = f"tenant {tenant!r}" if tenant else "the global layer"
        raise NotFoundError(f"no skill {ref!r} (by id or exact preferred label) visible to {who}")

    @_fenced
    def add_skill(self, skill_id: str, label: str, *, description: str = "", alt_labels: tuple[str, ...] = (),
                  tenant: str | None = None) -> dict[str, Any]:
        """A skill the taxonomy lacks, in the tenant's own layer (or the global one)."""
        self._check_editable()
        owner = _own(tenant)
        skill = Skill(id=check_text(skill_id, "the new skill's id", max_chars=T.MAX_SKILL_ID),
                      label=check_text(label, "the new skill's label", max_chars=T.MAX_LABEL),
                      alt_labels=tuple(check_text(a, "alt label", max_chars=T.MAX_LABEL) for a in alt_labels),
                      description=check_optional_text(description, "description", max_chars=T.MAX_DESCRIPTION),
                      taxonomy="custom", taxonomy_version="")
        vector = self.encoder.encode([skill.label])  # a skill is embedded by its label (manifest skill_text "label")
        # Checked and written under the item's lock: of two curators adding one id at once, one is refused.
        with self.store.item_lock("skill", owner, skill.id):
            existing = [r.payload for r in self.store.scroll(
                S.SKILLS, where={S.F_TENANT: layers(tenant), S.F_SKILL_ID: skill.id}, batch=4)]
            if existing:
                hint = ("it is retired or hidden for this tenant: `skill reinstate` brings it back"
                        if not any(skill_is_visible(p, tenant) for p in existing) else "use `skill update`")
                raise ConflictError(f"skill id {skill.id!r} already exists for this tenant: {hint}")
            payload = {**skill_payload(skill, owner), **self._provenance("curator")}
            self.store.upsert(S.SKILLS, [S.skill_point_id(owner, skill.id)], vector, [payload])
        return payload

    @_fenced
    def update_skill(
        self, ref: str, *, label: str | None = None, description: str | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """Change a skill of the tenant's own layer; a new label re-encodes that one skill, nothing else."""
        self._check_editable()
        label = None if label is None or not label.strip() else check_text(label, "the label", max_chars=T.MAX_LABEL)
        changes: dict[str, Any] = {}
        if description is not None:
            changes[S.F_DESCRIPTION] = check_optional_text(description, "the description", max_chars=T.MAX_DESCRIPTION)
        vector = self.encoder.encode([label]) if label is not None else None
        payload = self._own_skill(ref, tenant, "update")
        with self.store.item_lock("skill", payload[S.F_TENANT], payload[S.F_SKILL_ID]):  # label and vector agree
            payload = self._own_skill(ref, tenant, "update")
            point = S.skill_point_id(payload[S.F_TENANT], payload[S.F_SKILL_ID])
            if vector is not None and label != payload[S.F_LABEL]:
                # The vector and the changed fields, each one atomic update: rewriting the whole payload read above
                # would undo what another curator did in between (a retirement, a tenant's hide mark).
                self.store.update_vectors(S.SKILLS, [point], vector)
                changes[S.F_LABEL] = label
            changes[S.F_UPDATED_AT] = S.utc_now(precise=True)  # mapping's vector cache keys on it (_lookups)
            self.store.set_payload(S.SKILLS, [point], changes)
        return {**payload, **changes}

    @_fenced
    def retire_skill(self, ref: str, *, tenant: str | None = None) -> str:
        """Retire a skill of one's own layer (never returned again), or hide a global skill for this tenant.

        Returns "retired" or "hidden"."""
        self._check_editable()
        payload = self.resolve_skill(ref, tenant)
        if payload[S.F_TENANT] == _own(tenant):
            point = S.skill_point_id(payload[S.F_TENANT], payload[S.F_SKILL_ID])
            self.store.set_payload(S.SKILLS, [point], {S.F_STATUS: S.RETIRED, S.F_UPDATED_AT: S.utc_now()})
            return "retired"
        self._hide(S.SKILLS, S.skill_point_id(S.GLOBAL_TENANT, payload[S.F_SKILL_ID]), _own(tenant))
        return "hidden"

    @_fenced
    def reinstate_skill(self, ref: str, *, tenant: str | None = None) -> str:
        """Undo `retire_skill`: a retired skill of one's own layer is returned again, a global skill this tenant hid
        is shown to it again. Its sentences never left, so its votes come back with it.

        Returns "reinstated", "unhidden", or "already active" (a retry of a reinstatement that went through)."""
        self._check_editable()
        payload = self.resolve_skill(ref, tenant, include_retired=True)
        if skill_is_visible(payload, tenant):
            return "already active"
        point = S.skill_point_id(payload[S.F_TENANT], payload[S.F_SKILL_ID])
        if payload[S.F_TENANT] == _own(tenant):
            with self.store.item_lock("skill", payload[S.F_TENANT], payload[S.F_SKILL_ID]):
                self.store.set_payload(S.SKILLS, [point], {S.F_STATUS: S.ACTIVE, S.F_UPDATED_AT: S.utc_now()})
            return "reinstated"
        if payload.get(S.F_STATUS) == S.RETIRED:  # the global layer's own retirement: not this tenant's to undo
            raise InvalidInputError(f"skill {ref!r} was retired in the global layer: only an admin key (or a "
                                    "command without --tenant) reinstates it")
        self.store.delete_payload(S.SKILLS, [point], [S.hide_key(_own(tenant))])
        return "unhidden"

    def list_skills(self, *, tenant: str | None = None, own_only: bool = False) -> Iterator[dict[str, Any]]:
        where = visible_skills(tenant)
        if own_only:
            where = Where(must={S.F_TENANT: _own(tenant)}, must_not=where.must_not)
        for r in self.store.scroll(S.SKILLS, where=where):
            yield visible_payload(r.payload, tenant)

    # ---- memory ---------------------------------------------------------------------------------------------
    @_fenced
    def add_sentence(self, text: str, skill: str, *, tenant: str | None = None, source: str = "curator") -> bool:
        """Teach the memory that `text` expresses `skill`. Returns False when it was already stored."""
        self._check_editable()
        text = self._check_text(text)
        source = check_text(source, "the source", max_chars=T.MAX_SOURCE)
        skill_id = self.resolve_skill(skill, tenant)[S.F_SKILL_ID]
        owner = _own(tenant)
        point = S.memory_point_id(owner, skill_id, text)
        vector = self.encoder.encode([text])
        with self.store.item_lock("memory", text):
            if self.store.retrieve(S.MEMORY, [point], payload=False):
                return False
            payload = {**memory_payload(LabelledSentence(text, skill_id, source), owner, S.utc_now()),
                       **self._provenance(source)}
            self.store.upsert(S.MEMORY, [point], vector, [payload])
        return True

    @_fenced
    def remove_sentence(self, text: str, skill: str, *, tenant: str | None = None) -> str:
        """Remove a sentence of one's own layer, or hide a global one for this tenant. Returns "removed"/"hidden"."""
        self._check_editable()
        text = self._check_text(text)
        skill_id = self.resolve_skill(skill, tenant, include_retired=True)[S.F_SKILL_ID]
        owner = _own(tenant)
        own_point = S.memory_point_id(owner, skill_id, text)
        with self.store.item_lock("memory", text):  # a relabel of this sentence is either before or after
            if self.store.retrieve(S.MEMORY, [own_point], payload=False):
                self.store.delete(S.MEMORY, [own_point])
                if owner == S.GLOBAL_TENANT:  # a rebuild from the sources would make it anew: it removes it again
                    record_removal(self.store, S.MEMORY, own_point, self.user)
                return "removed"
            global_point = S.memory_point_id(S.GLOBAL_TENANT, skill_id, text)
            if owner != S.GLOBAL_TENANT and self.store.retrieve(S.MEMORY, [global_point], payload=False):
                self._hide(S.MEMORY, global_point, owner)
                return "hidden"
        raise NotFoundError(f"no memory sentence {text!r} labelled {skill_id!r} visible to this tenant")

    @_fenced
    def reinstate_sentence(self, text: str, skill: str, *, tenant: str | None = None) -> str:
        """Undo a tenant's hiding of a global sentence (`remove_sentence` answered "hidden"): it votes for the tenant
        again. Returns "unhidden", or "already active" (the tenant sees it: a retry that went through)."""
        self._check_editable()
        text = self._check_text(text)
        skill_id = self.resolve_skill(skill, tenant, include_retired=True)[S.F_SKILL_ID]
        owner, point = _own(tenant), S.memory_point_id(S.GLOBAL_TENANT, skill_id, text)
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

    @_fenced
    def relabel(self, text: str, skill: str, new_skill: str, *, tenant: str | None = None) -> None:
        """Move a sentence to another skill, reusing its stored vector (no re-encoding). A tenant relabelling a
        global sentence hides the global one and gets its own copy under the new skill."""
        self._check_editable()
        text = self._check_text(text)
        old_id = self.resolve_skill(skill, tenant, include_retired=True)[S.F_SKILL_ID]
        new_id = self.resolve_skill(new_skill, tenant)[S.F_SKILL_ID]
        owner = _own(tenant)
        # Under the sentence's lock: of two relabels (or a relabel and a removal) at once, the second finds the
        # sentence where the first left it.
        with self.store.item_lock("memory", text):
            self._relabel(text, old_id, new_id, owner)

    def _relabel(self, text: str, old_id: str, new_id: str, owner: str) -> None:
        source_point = None
        for layer in (owner, S.GLOBAL_TENANT):
            found = self.store.retrieve(S.MEMORY, [S.memory_point_id(layer, old_id, text)], with_vectors=True)
            if found and (layer == owner or S.hide_key(owner) not in found[0].payload):
                source_point = found[0]
                break
        if source_point is None:
            raise NotFoundError(f"no memory sentence {text!r} labelled {old_id!r} visible to this tenant")
        # A tenant's copy starts unhidden; a global relabel keeps the tenants' marks (they hid this sentence).
        payload = {k: v for k, v in source_point.payload.items()
                   if not k.startswith(S.HIDE_PREFIX) or owner == S.GLOBAL_TENANT}
        payload.update({S.F_TENANT: owner, S.F_SKILL_ID: new_id, S.F_UPDATED_AT: S.utc_now(),
                        "relabelled_by": self.user, "relabelled_from": old_id})
        # New point first, then the old one goes: a crash in between leaves both, never neither.
        new_point = S.memory_point_id(owner, new_id, text)
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

    def list_memory(self, skill: str | None = None, *, tenant: str | None = None,
                    own_only: bool = False) -> Iterator[dict[str, Any]]:
        where = visible_memory(tenant)
        must = dict(where.must)
        if own_only:
            must[S.F_TENANT] = _own(tenant)
        if skill is not None:
            must[S.F_SKILL_ID] = self.resolve_skill(skill, tenant, include_retired=True)[S.F_SKILL_ID]
        for r in self.store.scroll(S.MEMORY, where=Where(must=must, must_not=where.must_not)):
            yield visible_payload(r.payload, tenant)

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
                          self._provenance, rows, origin, owner=_own(tenant), source=source, progress=progress,
                          chunk=chunk, fence=lambda: self.editing(tenant))

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
        return delete_tenant_data(self.store, tenant)

    # ---- helpers --------------------------------------------------------------------------------------------
    def _provenance(self, source: str) -> dict[str, Any]:
        return {S.F_CREATED_BY: self.user, S.F_CREATED_AT: S.utc_now(), S.F_SOURCE: source}

    def _check_editable(self) -> None:
        """Refuse edits while a re-embedding is under way: its swap would replace the collections they went to."""
        pending = self.store.manifest.pending_reembed
        if pending:
            model = pending.get("model")
            raise StoreError(f"{self.store.describe()}: a re-embedding to {model} is under way; finish it with "
                             f"`knnbe-qdrant migrate --model {model}` before editing (its swap would lose the edit)")

    @staticmethod
    def _check_text(text: str) -> str:
        return check_text(text, "the memory sentence", max_chars=T.MAX_MEMORY_TEXT)

    def _own_skill(self, ref: str, tenant: str | None, action: str) -> dict[str, Any]:
        payload = self.resolve_skill(ref, tenant)
        if payload[S.F_TENANT] != _own(tenant):
            raise InvalidInputError(f"skill {ref!r} belongs to the global layer: a tenant cannot {action} it (retire "
                                    "it to hide it for yourself, then add your own)")
        return payload

    def _hide(self, collection: str, point: str, tenant: str) -> None:
        if tenant not in self._registered:
            self.store.register_hider(tenant)
            self._registered.add(tenant)
        self.store.set_payload(collection, [point], {S.hide_key(tenant): tenant})
