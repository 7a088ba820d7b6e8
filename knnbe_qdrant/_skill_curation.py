"""Skill edits, per tenant, and what every edit shares: the store, the encoder, the curator's name, the fences.

A tenant edits only its own layer; on the global layer it can only hide a skill for itself (a payload key of its own
on that point, `_schema.hide_key`), which changes nothing for anyone else. Each skill carries a revision, which
every change of its own point raises under the item's lock: an edit that names the revision it read is refused when
another came first (`_schema.F_REVISION`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import _schema as S
from . import _text as T
from ._build import curator_name, skill_payload
from ._data import Skill
from ._errors import ConflictError, InvalidInputError, NotFoundError, StoreError
from ._quota import Quota, room_for
from ._tenancy import is_tenant, layers, skill_is_visible, visible_payload, visible_skills
from ._text import check_optional_text, check_text
from .encoding import Encoder
from .store.base import Store, Where
from .store.locks import LOCK_WAIT_S


def own_layer(tenant: str | None) -> str:
    return S.GLOBAL_TENANT if tenant in (None, S.GLOBAL_TENANT) else S.check_tenant(tenant)


F = TypeVar("F", bound=Callable[..., Any])


def fenced_edit(edit: F) -> F:
    """An edit of the layer its `tenant` keyword names, made under the fences of such an edit (Curator.editing)."""
    @functools.wraps(edit)
    def fenced(self: SkillCurator, *args: Any, tenant: str | None = None, **kwargs: Any) -> Any:
        with self.editing(tenant):
            return edit(self, *args, tenant=tenant, **kwargs)
    return fenced  # type: ignore[return-value]


class EditedSkill(dict[str, Any]):
    """A skill's payload after `add_skill` or `update_skill`. `changed` is False when the store already held what
    was asked (a retry of an edit that went through, say): nothing was written, and the revision stayed. `asked`:
    the fields an update set, as stored (what its audit entry records)."""

    def __init__(self, payload: dict[str, Any], *, changed: bool = True, asked: dict[str, Any] | None = None) -> None:
        super().__init__(payload)
        self.changed = changed
        self.asked = asked or {}


class Outcome(str):
    """What a skill edit did ("retired", "hidden", ...), a plain string, with the skill's id and its revision after
    the edit."""

    skill: str
    revision: int

    def __new__(cls, what: str, payload: dict[str, Any], revision: int) -> Outcome:
        outcome = super().__new__(cls, what)
        outcome.skill, outcome.revision = payload[S.F_SKILL_ID], revision
        return outcome

    @property
    def changed(self) -> bool:
        """False for "already retired", "already active", ...: a retry of an edit that went through wrote nothing."""
        return not self.startswith("already")


def _check_revision(revision: int | None) -> None:
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int) or revision < 0):
        raise InvalidInputError(f"revision {revision!r}: a whole number >= 0 (the skill's `revision` as read)")


def _at_revision(payload: dict[str, Any], revision: int | None, ref: str, *, holds: bool = False) -> int:
    """The skill's revision now, if it is `revision` (or none was named); ConflictError otherwise, even when the
    skill already `holds` what the edit asks: a client that names a revision asks for its edit to be the one applied
    on what it read (two counters' "3 + 1" must not both pass), so it is told, and told what the skill holds."""
    now = S.revision_of(payload)
    if revision is not None and now != revision:
        held = (" (it already holds what this edit asks: if an earlier try of this edit came first, nothing is left "
                "to do)" if holds else "")
        raise ConflictError(f"skill {ref!r} is at revision {now}, not {revision}: another edit came first{held}; "
                            "read it again and retry")
    return now


def check_cursor(after: str | None) -> str | None:
    """A page's cursor is a point id, which a listing gave as `next`."""
    if after is None:
        return None
    try:
        return str(uuid.UUID(after))
    except (ValueError, TypeError, AttributeError):
        raise InvalidInputError(f"after {after!r}: not a cursor a listing gave (its `next`)") from None


def page_of(rows: Iterator[tuple[str, dict[str, Any]]], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """The first `limit` rows, and the cursor (point id) of the row after them; None when there is none."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f"limit {limit!r}: a whole number >= 1")
    items: list[dict[str, Any]] = []
    for point, row in rows:
        if len(items) == limit:
            return items, point
        items.append(row)
    return items, None


class SkillCurator:
    """The skills half of `Curator` (which see), and the parts every edit shares."""

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
        self.quota: Quota | None = None  # how many skills and sentences of its own a tenant may add (_quota)

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
        checked = check_text(ref, "the skill (its id or exact preferred label)", max_chars=T.MAX_SKILL_REF)
        where = Where(must={S.F_TENANT: layers(tenant)})
        # the normalized form first; a skill stored before texts were normalized (NFC) is found as it is spelled
        spellings = dict.fromkeys((checked, ref.strip()))
        for key, spelling in itertools.product((S.F_SKILL_ID, S.F_LABEL), spellings):
            found = [
                r.payload for r in self.store.scroll(S.SKILLS, where=Where({**where.must, key: spelling}), batch=16)
                if include_retired or skill_is_visible(r.payload, tenant)
            ]
            if len(found) > 1:  # the tenant's own skill shadows a global one of the same id or label
                own = [p for p in found if p[S.F_TENANT] == own_layer(tenant)]
                found = own if len(own) == 1 else found
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                ids = ", ".join(sorted(p[S.F_SKILL_ID] for p in found))
                raise InvalidInputError(f"{spelling!r} names several skills ({ids}): use the skill id")
        who = f"tenant {tenant!r}" if tenant else "the global layer"
        raise NotFoundError(f"no skill {checked!r} (by id or exact preferred label) visible to {who}")

    @fenced_edit
    def add_skill(self, skill_id: str, label: str, *, description: str = "", alt_labels: tuple[str, ...] = (),
                  tenant: str | None = None) -> EditedSkill:
        """A skill the taxonomy lacks, in the tenant's own layer (or the global one). ConflictError if the id is
        taken, unless by this very skill (same label and description, in the tenant's layer, active: a retry of an
        add that went through; `EditedSkill.changed` False)."""
        self._check_editable()
        owner = own_layer(tenant)
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
            same = [p for p in existing if p[S.F_TENANT] == owner and skill_is_visible(p, tenant)
                    and (p[S.F_LABEL], p.get(S.F_DESCRIPTION, "")) == (skill.label, skill.description)]
            if same:
                return EditedSkill(same[0], changed=False)
            if existing:
                hint = ("it is retired or hidden for this tenant: `skill reinstate` brings it back"
                        if not any(skill_is_visible(p, tenant) for p in existing) else "use `skill update`")
                raise ConflictError(f"skill id {skill.id!r} already exists for this tenant: {hint}")
            payload = {**skill_payload(skill, owner), **self._provenance("curator"), S.F_REVISION: 1}
            with room_for(self.store, self.quota, owner, S.SKILLS, 1):
                self.store.upsert(S.SKILLS, [S.skill_point_id(owner, skill.id)], vector, [payload])
        return EditedSkill(payload)

    @fenced_edit
    def update_skill(
        self, ref: str, *, label: str | None = None, description: str | None = None, revision: int | None = None,
        tenant: str | None = None,
    ) -> EditedSkill:
        """Change a skill of the tenant's own layer; a new label re-encodes that one skill, nothing else. With
        `revision` (the one read), refused with ConflictError if the skill changed since. When the skill already
        holds what is asked, nothing is written (`EditedSkill.changed` False). The payload as written."""
        self._check_editable()
        _check_revision(revision)
        label = None if label is None or not label.strip() else check_text(label, "the label", max_chars=T.MAX_LABEL)
        changes: dict[str, Any] = {}
        if description is not None:
            changes[S.F_DESCRIPTION] = check_optional_text(description, "the description", max_chars=T.MAX_DESCRIPTION)
        vector = self.encoder.encode([label]) if label is not None else None
        payload = self._own_skill(ref, tenant, "update")
        with self.store.item_lock("skill", payload[S.F_TENANT], payload[S.F_SKILL_ID]):  # label and vector agree
            point, payload = self._active_now(payload, ref)
            asked = {**changes, **({S.F_LABEL: label} if label is not None else {})}
            holds = all(payload.get(k) == v for k, v in asked.items())
            changes[S.F_REVISION] = _at_revision(payload, revision, ref, holds=holds) + 1
            if holds:  # nothing to write: no new revision, no vector
                return EditedSkill(payload, changed=False, asked=asked)
            if vector is not None and label != payload[S.F_LABEL]:
                # The vector and the changed fields, each one atomic update: rewriting the whole payload read above
                # would undo what another curator did in between (a retirement, a tenant's hide mark).
                self.store.update_vectors(S.SKILLS, [point], vector)
                changes[S.F_LABEL] = label
            changes[S.F_UPDATED_AT] = S.utc_now(precise=True)  # mapping's vector cache keys on it (_lookups)
            self.store.set_payload(S.SKILLS, [point], changes)
        return EditedSkill({**payload, **changes}, asked=asked)

    @fenced_edit
    def retire_skill(self, ref: str, *, revision: int | None = None, tenant: str | None = None) -> Outcome:
        """Retire a skill of one's own layer (never returned again), or hide a global skill for this tenant. With
        `revision` (the one read), refused with ConflictError if the skill changed since.

        Returns "retired" or "hidden", or "already retired" / "already hidden" (a retry, without a revision, of a
        retirement that went through), with the skill's revision after it."""
        self._check_editable()
        _check_revision(revision)
        try:
            payload = self.resolve_skill(ref, tenant)
        except NotFoundError:
            gone = self.resolve_skill(ref, tenant, include_retired=True)
            if gone[S.F_TENANT] == own_layer(tenant):  # retired: by this edit's first try, or another's
                return Outcome("already retired", gone, _at_revision(gone, revision, ref, holds=True))
            if S.hide_key(own_layer(tenant)) in gone:
                return Outcome("already hidden", gone, _at_revision(gone, revision, ref, holds=True))
            raise  # a global skill the global layer retired: none for this tenant
        if payload[S.F_TENANT] != own_layer(tenant):
            now = _at_revision(payload, revision, ref)
            self._hide(S.SKILLS, S.skill_point_id(S.GLOBAL_TENANT, payload[S.F_SKILL_ID]), own_layer(tenant))
            return Outcome("hidden", payload, now)
        point = S.skill_point_id(payload[S.F_TENANT], payload[S.F_SKILL_ID])
        with self.store.item_lock("skill", payload[S.F_TENANT], payload[S.F_SKILL_ID]):
            [payload] = [r.payload for r in self.store.retrieve(S.SKILLS, [point])]  # as it is now
            if payload.get(S.F_STATUS) == S.RETIRED:
                return Outcome("already retired", payload, _at_revision(payload, revision, ref, holds=True))
            now = _at_revision(payload, revision, ref) + 1
            self.store.set_payload(S.SKILLS, [point], {S.F_STATUS: S.RETIRED, S.F_UPDATED_AT: S.utc_now(precise=True),
                                                       S.F_REVISION: now})
        return Outcome("retired", payload, now)

    @fenced_edit
    def reinstate_skill(self, ref: str, *, revision: int | None = None, tenant: str | None = None) -> Outcome:
        """Undo `retire_skill`: a retired skill of one's own layer is returned again, a global skill this tenant hid
        is shown to it again. Its sentences never left, so its votes come back with it. With `revision` (the one
        read), refused with ConflictError if the skill changed since.

        Returns "reinstated", "unhidden", or "already active" (a retry, without a revision, of a reinstatement that
        went through), with the skill's revision after it."""
        self._check_editable()
        _check_revision(revision)
        payload = self.resolve_skill(ref, tenant, include_retired=True)
        if skill_is_visible(payload, tenant):
            return Outcome("already active", payload, _at_revision(payload, revision, ref, holds=True))
        point = S.skill_point_id(payload[S.F_TENANT], payload[S.F_SKILL_ID])
        if payload[S.F_TENANT] == own_layer(tenant):
            with self.store.item_lock("skill", payload[S.F_TENANT], payload[S.F_SKILL_ID]):
                [payload] = [r.payload for r in self.store.retrieve(S.SKILLS, [point])]  # as it is now
                if skill_is_visible(payload, tenant):
                    return Outcome("already active", payload, _at_revision(payload, revision, ref, holds=True))
                now = _at_revision(payload, revision, ref) + 1
                self.store.set_payload(S.SKILLS, [point], {S.F_STATUS: S.ACTIVE,
                                                           S.F_UPDATED_AT: S.utc_now(precise=True), S.F_REVISION: now})
            return Outcome("reinstated", payload, now)
        if payload.get(S.F_STATUS) == S.RETIRED:  # the global layer's own retirement: not this tenant's to undo
            raise InvalidInputError(f"skill {ref!r} was retired in the global layer: only an admin key (or a "
                                    "command without --tenant) reinstates it")
        now = _at_revision(payload, revision, ref)
        self.store.delete_payload(S.SKILLS, [point], [S.hide_key(own_layer(tenant))])
        return Outcome("unhidden", payload, now)

    def list_skills(self, *, tenant: str | None = None, own_only: bool = False) -> Iterator[dict[str, Any]]:
        return (row for _, row in self._skill_rows(tenant, own_only, None, 1000))

    def page_skills(self, limit: int, *, tenant: str | None = None, own_only: bool = False,
                    after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """At most `limit` of the skills `list_skills` gives, from the cursor `after` on (None: the first); and the
        cursor of the next page (None: this is the last). Pages follow the store's point order, so a skill that
        exists throughout is listed once, whatever is added or retired meanwhile."""
        return page_of(self._skill_rows(tenant, own_only, after, limit + 1), limit)

    def _skill_rows(self, tenant: str | None, own_only: bool, after: str | None,
                    batch: int) -> Iterator[tuple[str, dict[str, Any]]]:
        where = visible_skills(tenant)
        if own_only:
            where = Where(must={S.F_TENANT: own_layer(tenant)}, must_not=where.must_not)
        for r in self.store.scroll(S.SKILLS, where=where, batch=min(batch, 1000), start=check_cursor(after)):
            yield r.id, {**visible_payload(r.payload, tenant), S.F_REVISION: S.revision_of(r.payload)}

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

    def _own_skill(self, ref: str, tenant: str | None, action: str) -> dict[str, Any]:
        payload = self.resolve_skill(ref, tenant)
        if payload[S.F_TENANT] != own_layer(tenant):
            raise InvalidInputError(f"skill {ref!r} belongs to the global layer: a tenant cannot {action} it (retire "
                                    "it to hide it for yourself, then add your own)")
        return payload

    def _active_now(self, payload: dict[str, Any], ref: str) -> tuple[str, dict[str, Any]]:
        """The point of the skill `payload` was read from, and its payload as it is now (the caller holds the skill's
        lock): an edit that landed since is seen, and one that retired it makes an update NotFoundError."""
        point = S.skill_point_id(payload[S.F_TENANT], payload[S.F_SKILL_ID])
        now = [r.payload for r in self.store.retrieve(S.SKILLS, [point])]
        if not now or now[0].get(S.F_STATUS) == S.RETIRED:
            raise NotFoundError(f"skill {ref!r} was retired by another edit meanwhile")
        return point, now[0]

    def _hide(self, collection: str, point: str, tenant: str) -> None:
        if tenant not in self._registered:
            self.store.register_hider(tenant)
            self._registered.add(tenant)
        self.store.set_payload(collection, [point], {S.hide_key(tenant): tenant})
