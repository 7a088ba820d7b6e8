"""The /v1 endpoints. Each checks the key's role; the tenant always comes from the key.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time, and the role
dependencies (Reader, Curator_, Admin) are local to `router`."""


import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam

from .. import _schema as S
from .._decompose import fold, pieces_to_map
from .._mapper import validate_sentences
from .._quota import points_of
from .._text import MAX_SKILL_REF, VISIBLE
from ..postings.mapping import aggregate
from ..postings.reading import Posting, split_sentences
from ..store.documents import AUDIT, TENANT_DELETE, tenant_audit
from .gate import SCOPE_KEY
from .keys import Key
from .models import (
    CURSOR,
    Edited,
    ErrorOut,
    Listing,
    MapRequest,
    MapResponse,
    MemoryAdd,
    MemoryRef,
    MemoryRelabel,
    Message,
    PostingRequest,
    SkillCreate,
    SkillEdited,
    SkillRef,
    SkillUpdate,
    Tail,
)
from .state import NO_KEY, ApiError, Service


async def answered(request: Request, job: Future[Any]) -> Any:
    """The job's result; if the client goes away first, the job is cancelled (the batcher drops a job that has not
    started) and the request ends there."""
    waiting = asyncio.wrap_future(job)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if waiting in done:
        return waiting.result()
    waiting.cancel()
    raise ApiError(499, "the client closed the request")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


EDITS_PER_TENANT = 4
"""Edits of one tenant running at once; the others wait their turn without holding a worker thread."""


def router(service: Service) -> APIRouter:
    def role(needed: str) -> Callable[[Request], Awaitable[Key]]:
        async def check(request: Request) -> Key:
            key = request.scope.get(SCOPE_KEY)
            if key is None:  # the gate checks every /v1 request's key before its body is read (gate.RequestGate)
                raise ApiError(401, NO_KEY)
            if not key.allows(needed):
                raise ApiError(403, f"this key's role is {key.role}; this needs {needed}")
            return key

        return check

    # A tenant's edits take the shared worker threads a few at a time: 100 concurrent edits of long texts from one
    # tenant took all 40, and another tenant's edit waited 1.6-3.2 s for one (2026-12-07).
    edit_slots: dict[str | None, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(EDITS_PER_TENANT))

    async def curator_slot(key: Annotated[Key, Depends(role("curator"))]) -> AsyncIterator[Key]:
        async with edit_slots[key.tenant]:
            yield key

    Reader = Annotated[Key, Depends(role("reader"))]
    Curator_ = Annotated[Key, Depends(curator_slot)]
    Admin = Annotated[Key, Depends(role("admin"))]
    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut, "description": text} for code, text in (
        (400, "the body is not JSON"), (401, "no key, or an unknown or revoked one"),
        (403, "the key's role does not allow this, or the tenant holds all the skills or sentences its quota "
              "allows"),
        (404, "no such skill or sentence for this key's tenant"),
        (408, "the body did not arrive within the service's --read-timeout"),
        (409, "another edit of the same item came first: re-read and retry"),
        (413, "the body is over the service's --max-body-bytes"), (422, "bad input: the message names the field"),
        (429, "this tenant's requests in flight hold its share of bodies: retry when some are answered"),
        (499, "the client closed the request before its answer"), (500, "internal error (see the service's log)"),
        (503, "not ready, or the store is unusable or damaged"))}
    api = APIRouter(prefix="/v1", responses=errors)
    limits = service.limits

    def check_sentences(sentences: list[str]) -> list[str]:
        if len(sentences) > limits.max_sentences:
            raise ApiError(422, f"sentences: {len(sentences)} given, at most {limits.max_sentences} per request "
                                "(the service's --max-sentences)")
        for i, s in enumerate(sentences):
            if isinstance(s, str) and len(s) > limits.max_chars:
                raise ApiError(422, f"sentences[{i}]: {len(s)} characters, at most {limits.max_chars} "
                                    "(the service's --max-chars)")
        return validate_sentences(sentences)

    def check_top(top: int) -> None:
        if top > limits.max_top:
            raise ApiError(422, f"top: at most {limits.max_top}, got {top}")

    async def map_batched(request: Request, sentences: list[str], top: int, tenant: str | None,
                          decompose: bool | None) -> list[Any]:
        mapper, _, _, batcher = service.require_ready()
        service.metrics.request_sentences.observe(len(sentences))
        wholes = await answered(request, batcher.submit(sentences, top, tenant))
        if not (mapper.decompose if decompose is None else decompose):
            return wholes
        # The pieces of the sentences the memory lacks, batched like any request's sentences, then folded back
        # as `SkillMapper.map` does.
        parts = pieces_to_map(wholes, mapper.merge_params)
        flat = [p for ps in parts for p in ps]
        mapped = await answered(request, batcher.submit(flat, top, tenant)) if flat else []
        return fold(wholes, mapped, parts, top, mapper.merge_params)

    # Listings and the audit tail read and serialise much: a few at a time, so that many of them (or slow readers
    # of them) cannot take every worker thread from the other requests.
    # Per tenant too: one tenant's flood of them holds at most two of the four.
    heavy = asyncio.Semaphore(4)
    heavy_per_tenant: dict[str | None, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(2))

    async def bounded(key: Key, fn: Callable[[], Any]) -> Any:
        async with heavy_per_tenant[key.tenant], heavy:
            return await asyncio.to_thread(fn)

    @api.post("/map", response_model=MapResponse, summary="Map sentences to skills")
    async def map_sentences(body: MapRequest, key: Reader, request: Request) -> Response:
        check_top(body.top)
        results = await map_batched(request, check_sentences(body.sentences), body.top, key.tenant, body.decompose)
        # Serialised here: the response model documents the shape, but validating and encoding every evidence
        # sentence through it again would cost more than the mapping's own Python work.
        return Response(json.dumps({"results": [r.to_dict() for r in results]}, ensure_ascii=False),
                        media_type="application/json")

    @api.post("/map/posting", summary="Map a whole posting: split into sentences, skills aggregated per posting")
    async def map_posting(body: PostingRequest, key: Reader, request: Request) -> dict[str, Any]:
        check_top(body.top)
        check_top(body.sentence_top)
        if len(body.text) > limits.max_chars * limits.max_sentences:
            raise ApiError(422, f"text: {len(body.text)} characters, at most {limits.max_chars * limits.max_sentences}")
        sentences = [s[: limits.max_chars] for s in split_sentences(body.text)]
        if len(sentences) > limits.max_sentences:
            raise ApiError(422, f"text: {len(sentences)} sentences, at most {limits.max_sentences} per request")
        results = (await map_batched(request, sentences, body.sentence_top, key.tenant, body.decompose)
                   if sentences else [])
        return aggregate(Posting(body.id or "", body.text), results, body.top)

    @api.get("/whoami", summary="The key's name, role and tenant")
    def whoami(key: Reader) -> dict[str, Any]:
        return {"name": key.name, "role": key.role, "tenant": key.tenant}

    @api.get("/status", summary="The store's model and schema, and the key's tenant's own counts")
    def status(key: Reader) -> dict[str, Any]:
        mapper, curator, _, _ = service.require_ready()
        m = mapper.store.manifest
        out: dict[str, Any] = {"model": m.model, "dimension": m.dimension, "schema_version": m.schema_version,
                               "state": m.state, "tenant": key.tenant, "params": mapper.params.__dict__,
                               "decompose": mapper.decompose, "merge": mapper.merge_params.__dict__}
        owner = key.tenant or S.GLOBAL_TENANT
        out["own"] = {c: points_of(mapper.store, owner, c) for c in S.COLLECTIONS}  # a second old at most
        if key.tenant is not None and curator.quota is not None:  # what its own may grow to (the global layer: none)
            out["quota"] = {S.SKILLS: curator.quota.skills, S.MEMORY: curator.quota.sentences,
                            "audit": curator.quota.audit_entries}
            out["own"]["audit"] = mapper.store.documents().log_length(tenant_audit(key.tenant))
        if key.role == "admin":
            out["store"] = mapper.store.status()
        return out

    @api.get("/skills/search", response_model=Listing, summary="Skills visible to the key, by similarity to a label")
    async def search_skills(key: Reader, q: Annotated[str, Query(min_length=1, max_length=500, pattern=VISIBLE)],
                            limit: Annotated[int, Query(ge=1, le=50)] = 10) -> dict[str, Any]:
        mapper, _, _, _ = service.require_ready()
        [query] = validate_sentences([q])
        # Bounded like the listings: unbounded, one tenant's 64 concurrent searches queued every other tenant's
        # search behind all of them on the shared threads (2.4 s, 2026-12-07). Not through the batcher: queued
        # there, they held the other tenants' maps for an encoder chunk each (p50 156 -> 278 ms).
        [result] = await bounded(key, lambda: mapper.map_vectors(
            [query], mapper.encode([query]), top=limit, mode="bi-encoder", tenant=key.tenant))
        return {"items": [{"id": s.id, "label": s.label, "similarity": s.bi_encoder} for s in result.skills],
                "truncated": False}

    def listing(page: tuple[list[dict[str, Any]], str | None]) -> dict[str, Any]:
        """A page of rows (the curator's listings are already the tenant's view: no `hidden_for`) and the cursor
        of the next one."""
        items, after = page
        return {"items": items, "truncated": after is not None, "next": after}

    Limit = Annotated[int, Query(ge=1, le=10_000)]
    After = Annotated[str | None, Query(pattern=CURSOR, description="the `next` of the page before (none: the first "
                                        "page)")]

    @api.get("/skills", response_model=Listing, summary="Skills visible to the key (or only its own layer's), a page "
             "at a time")
    async def list_skills(key: Reader, own: bool = False, limit: Limit = 100, after: After = None) -> dict[str, Any]:
        _, curator, _, _ = service.require_ready()
        return await bounded(key, lambda: listing(curator.page_skills(limit, tenant=key.tenant, own_only=own,
                                                                      after=after)))

    @api.get("/memory", response_model=Listing, summary="A skill's memory sentences visible to the key, with "
             "provenance, a page at a time")
    async def list_memory(key: Reader, skill: Annotated[str, Query(min_length=1, max_length=MAX_SKILL_REF,
                                                                    pattern=VISIBLE)],
                          own: bool = False, limit: Limit = 200, after: After = None) -> dict[str, Any]:
        _, curator, _, _ = service.require_ready()
        return await bounded(key, lambda: listing(curator.page_memory(limit, skill, tenant=key.tenant, own_only=own,
                                                                      after=after)))

    @api.get("/audit", response_model=Tail, summary="Recent edits of the key's tenant (all, for an admin)")
    async def audit(key: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        mapper, _, _, _ = service.require_ready()
        documents = mapper.store.documents()

        def tail() -> list[dict[str, Any]]:
            # An admin reads every edit; any other key (each has a tenant) its tenant's own log.
            kind = AUDIT if key.role == "admin" or key.tenant is None else tenant_audit(key.tenant)
            return documents.tail(kind, limit + 1)

        entries = await bounded(key, tail)
        return {"items": entries[:limit], "truncated": len(entries) > limit}

    @api.post("/skills", response_model=SkillEdited, status_code=201, summary="Add a skill to the key's layer")
    def add_skill(body: SkillCreate, key: Curator_) -> dict[str, Any]:
        with service.editing(key) as curator:
            added = curator.add_skill(body.id, body.label, description=body.description, tenant=key.tenant)
            if added.changed:
                service.audit(key, "skill add", skill=body.id, label=body.label, revision=added[S.F_REVISION])
        return {"result": "added" if added.changed else "already added", "skill": added[S.F_SKILL_ID],
                "revision": S.revision_of(added)}

    @api.post("/skills/update", response_model=SkillEdited, summary="Change a skill of the key's layer (give the "
              "`revision` you read, and an edit made since is never overwritten)")
    def update_skill(body: SkillUpdate, key: Curator_) -> dict[str, Any]:
        with service.editing(key) as curator:
            done = curator.update_skill(body.skill, label=body.label, description=body.description,
                                        revision=body.revision, tenant=key.tenant)
            if done.changed:  # the revision orders one skill's entries as its edits landed, whatever their log order
                service.audit(key, "skill update", skill=body.skill, **done.asked, revision=done[S.F_REVISION])
        return {"result": "updated" if done.changed else "unchanged", "skill": done[S.F_SKILL_ID],
                "revision": S.revision_of(done)}

    @api.post("/skills/retire", response_model=SkillEdited, summary="Retire a skill of the key's layer, or hide a "
              "global one (a retry answers 'already retired' or 'already hidden')")
    def retire_skill(body: SkillRef, key: Curator_) -> dict[str, Any]:
        with service.editing(key) as curator:
            outcome = curator.retire_skill(body.skill, revision=body.revision, tenant=key.tenant)
            if outcome.changed:
                service.audit(key, f"skill {outcome}", skill=body.skill, revision=outcome.revision)
        return {"result": str(outcome), "skill": outcome.skill, "revision": outcome.revision}

    @api.post("/skills/reinstate", response_model=SkillEdited, summary="Undo a retirement, or show a global skill the "
              "key's tenant hid again")
    def reinstate_skill(body: SkillRef, key: Curator_) -> dict[str, Any]:
        with service.editing(key) as curator:
            outcome = curator.reinstate_skill(body.skill, revision=body.revision, tenant=key.tenant)
            if outcome.changed:
                service.audit(key, f"skill {outcome}", skill=body.skill, revision=outcome.revision)
        return {"result": str(outcome), "skill": outcome.skill, "revision": outcome.revision}

    @api.post("/memory", response_model=Edited, status_code=201, summary="Teach the memory a labelled sentence")
    def add_memory(body: MemoryAdd, key: Curator_) -> dict[str, str]:
        [text] = check_sentences([body.text])
        with service.editing(key) as curator:
            # Resolved before the write, not after: a skill retired in between would answer 404 for a stored
            # sentence.
            skill = curator.resolve_skill(body.skill, key.tenant)[S.F_SKILL_ID]
            added = curator.add_sentence(text, skill, tenant=key.tenant, source=body.source)
            if added:
                service.audit(key, "memory add", skill=body.skill, text=text)
        return {"result": "added" if added else "already stored", "skill": skill, "text": text}

    @api.post("/memory/remove", response_model=Message, summary="Remove a sentence of the key's layer, or hide a "
              "global one")
    def remove_memory(body: MemoryRef, key: Curator_) -> dict[str, str]:
        with service.editing(key) as curator:
            outcome = curator.remove_sentence(body.text, body.skill, tenant=key.tenant)
            service.audit(key, f"memory {outcome}", skill=body.skill, text=body.text)
        return {"result": outcome}

    @api.post("/memory/reinstate", response_model=Message, summary="Show a global sentence the key's tenant hid "
              "again")
    def reinstate_memory(body: MemoryRef, key: Curator_) -> dict[str, str]:
        with service.editing(key) as curator:
            outcome = curator.reinstate_sentence(body.text, body.skill, tenant=key.tenant)
            if outcome != "already active":
                service.audit(key, f"memory {outcome}", skill=body.skill, text=body.text)
        return {"result": outcome}

    @api.post("/memory/relabel", response_model=Message, summary="Move a sentence to another skill (no re-encoding; "
              "a retry answers 'already relabelled', a move to its own skill 'unchanged')")
    def relabel_memory(body: MemoryRelabel, key: Curator_) -> dict[str, str]:
        with service.editing(key) as curator:
            outcome = curator.relabel(body.text, body.skill, body.to, tenant=key.tenant)
            if outcome == "relabelled":
                service.audit(key, "memory relabel", skill=body.skill, to=body.to, text=body.text)
        return {"result": outcome}

    @api.get("/tenants", summary="Tenants and their own point counts (admin)")
    def tenants(key: Admin) -> dict[str, Any]:
        _, curator, _, _ = service.require_ready()
        return {"tenants": curator.tenants()}

    @api.delete("/tenants/{name}", response_model=Message,
                summary="Remove exactly this tenant's data and revoke its keys (admin)")
    def delete_tenant(name: Annotated[str, PathParam(pattern=S.TENANT_PATTERN)], key: Admin) -> dict[str, str]:
        revoked = service.curator_for(key).delete_tenant(name)
        service.audit(key, TENANT_DELETE, tenant_deleted=name, keys_revoked=revoked)
        return {"result": "deleted"}

    return api
