"""Orchestration, one way: texts -> vectors -> one query per collection -> scores -> results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from . import _schema as S
from ._candidates import Candidates, one_hit_per_skill
from ._data import tuned_defaults
from ._decompose import MergeParams, clause_of_tokens, fold, pieces_to_map
from ._errors import InvalidInputError
from ._lookups import MemoryPayloads, SkillVectors, Voters
from ._results import Evidence, SentenceResult, SkillMatch, attended_words
from ._scoring import (
    MIN_TOKEN_CANDIDATES,
    Scored,
    ScoringParams,
    blend_bi_encoder,
    clause_of_candidates,
    cover_clauses,
    score_batch,
    token_attention_batch,
)
from ._tenancy import is_tenant, layers, skill_is_visible, visible_memory, visible_skills
from ._text import check_text
from .encoding import Encoded, Encoder, canonical_model_name
from .store.base import Hit, Store, Where
from .store.connection import Location, open_store

MODES = ("knnbe", "bi-encoder", "knn")
DEFAULT_HNSW_EF = 128
# Memory holds the same text under several skills, so neighbours often tie; fetching a few past k and cutting with
# a fixed tie-break makes the k voters the same on every backend instead of whichever tied point an engine saw first.
TIE_MARGIN = 8
_TIE = 1e-6
TOKEN_CHUNK = 16
"""Sentences whose token scores are computed at once, taken in order of length and padded to the longest of the
16: postings' sentences run from 4 to 176 tokens (the 120 of TECH and HOUSE validation that token matching scored:
median 14), and padding 64 of them to the longest made about 4 times the work (0.36 against 0.095 ms per sentence;
8, 16 and 32 measured, 16 best)."""


def validate_sentences(sentences: Sequence[str], what: str = "sentence") -> list[str]:
    """The sentences stripped, or InvalidInputError naming the first unusable one (see _text.check_text)."""
    if isinstance(sentences, str):
        raise InvalidInputError("map() takes a list of sentences, not one string")
    return [check_text(s, f"{what} #{i}") for i, s in enumerate(sentences)]


class SkillMapper:
    """Maps sentences to skills with kNNBE over a store's `skills` and `memory` collections."""

    def __init__(
        self,
        store: Store,
        encoder: Encoder,
        params: ScoringParams | None = None,
        *,
        exact: bool = False,
        hnsw_ef: int | None = DEFAULT_HNSW_EF,
        memory_sources: Sequence[str] | None = None,
        decompose: bool | None = None,
    ) -> None:
        manifest = store.check_ready()
        store.check_model(encoder.name, encoder.dimension)
        self.store = store
        self.encoder = encoder
        # Explicit > tuned for this store > tuned for this model and shipped > the documented plain defaults.
        tuned = manifest.params or tuned_defaults(manifest.model)
        self.params = params or ScoringParams(
            **{k: v for k, v in tuned.items() if k in ScoringParams.__dataclass_fields__}
        )
        self.exact = exact
        self.hnsw_ef = hnsw_ef
        self.memory_payloads = MemoryPayloads(store)
        self.skill_vectors = SkillVectors(store, cacheable=manifest.skill_text == "label")
        # Decomposition as asked, else as tuned: the store's own tuning (`tune --decompose` or `--no-decompose`),
        # else the model's shipped defaults (with it, for the shipped model), with the merge settings chosen there.
        merging = tuned.get("decompose")
        self.decompose = bool(merging) if decompose is None else decompose
        self.merge_params = MergeParams.from_record(merging)
        # Votes only from memory of these sources (e.g. to measure what each source adds); None = all of them.
        self.memory_sources = list(memory_sources) if memory_sources else None
        self._hiders: tuple[object, frozenset[str]] = (object(), frozenset())  # (documents version, tenants)

    @classmethod
    def open(
        cls,
        location: Location = None,
        *,
        model: str | None = None,
        params: ScoringParams | None = None,
        exact: bool = False,
        device: str | None = None,
        memory_sources: Sequence[str] | None = None,
        decompose: bool | None = None,
        threads: int | None = None,
    ) -> SkillMapper:
        """Open a built store with the model it was built with. `location` is a `Connection` (a server, or any
        setting spelled out), an embedded store path, or None: the environment, else the default directory.
        `threads`: CPU threads one encoder call may use (None: every core; see `Encoder`).

        Naming another `model` than the store's is refused with ModelMismatchError before the model is loaded.
        """
        store = open_store(location)
        try:
            # Cheap checks first, before loading the model; the constructor verifies the store against its manifest.
            manifest = store.check_ready(verify=False)
            if model is not None:
                store.check_model(canonical_model_name(model), None)
            return cls(store, Encoder(manifest.model, device=device, threads=threads), params, exact=exact,
                       memory_sources=memory_sources, decompose=decompose)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SkillMapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(
        self,
        sentences: Sequence[str],
        *,
        top: int = 10,
        mode: str = "knnbe",
        tenant: str | None = None,
        batch_size: int = 256,
        decompose: bool | None = None,
    ) -> list[SentenceResult]:
        """Each sentence's `top` skills, best first. Sentences must be non-empty strings. With `decompose` (default:
        the mapper's), each sentence is also mapped piece by piece and the rankings merged (see _decompose)."""
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        texts = validate_sentences(sentences)
        decompose = self.decompose if decompose is None else decompose
        results: list[SentenceResult] = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            wholes = self.map_vectors(batch, self.encode(batch), top=top, mode=mode, tenant=tenant)
            if not decompose:
                results += wholes
                continue
            parts = pieces_to_map(wholes, self.merge_params)  # a second pass, for the sentences the memory lacks
            flat = [p for ps in parts for p in ps]
            mapped = self.map_vectors(flat, self.encode(flat), top=top, mode=mode, tenant=tenant)
            results += fold(wholes, mapped, parts, top, self.merge_params)
        return results

    def encode(self, texts: Sequence[str]) -> np.ndarray | Encoded:
        """What `map_vectors` needs for these texts, from one forward pass: with token-level matching (the params'
        token_weight > 0), the token states as well as the vectors."""
        return self.encoder.encode_tokens(texts) if self.params.token_weight > 0 else self.encoder.encode(texts)

    def map_vectors(
        self,
        texts: Sequence[str],
        vectors: np.ndarray | Encoded,
        *,
        top: int = 10,
        mode: str = "knnbe",
        tenant: str | None = None,
    ) -> list[SentenceResult]:
        """Score already-encoded sentences (`encode`'s output): one query to `skills`, one to `memory`, at most
        two retrieves (and, inside the embedded store, one for skill payloads its cache lacks). Plain vectors where
        token-level matching needs the token states are encoded again."""
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
        if top < 1:
            raise InvalidInputError(f"top must be >= 1, got {top}")
        if len(texts) == 0:
            return []
        p = self.params
        use_tokens = p.token_weight > 0 and mode != "knn"
        encoded = vectors if isinstance(vectors, Encoded) else None
        if use_tokens and encoded is None:
            encoded = self.encoder.encode_tokens(texts)
        pooled = encoded.vectors if encoded is not None else np.asarray(vectors)
        n_skills = max(p.n_candidates or top, top, MIN_TOKEN_CANDIDATES if use_tokens else 0)
        marked = self._has_marks(tenant)
        fields = [S.F_SKILL_ID, S.F_LABEL, *([S.F_UPDATED_AT] if use_tokens else [])]
        skill_hits = self.store.query_batch(
            S.SKILLS, pooled, n_skills, where=visible_skills(tenant, marked=marked), payload=fields,
            exact=self.exact, hnsw_ef=self.hnsw_ef,
        )
        if mode == "bi-encoder":
            voters = Voters.empty(len(texts))
        else:
            where = visible_memory(tenant, marked=marked)
            if self.memory_sources:
                where = Where(must={**where.must, S.F_SOURCE: self.memory_sources}, must_not=where.must_not)
            fetched = self.store.query_keys_batch(
                S.MEMORY, pooled, p.k + TIE_MARGIN, where=where, exact=self.exact, hnsw_ef=self.hnsw_ef,
            )
            voters = self.memory_payloads.fill(fetched).nearest(p.k, _TIE)

        skill_hits = [one_hit_per_skill(hits) for hits in skill_hits]
        rows = Candidates.of(skill_hits, voters)
        # Token matching scores the sentences the memory knows less well than the gate (NaN, no neighbour, counts
        # as below it), against their hits' vectors: read with the kNN-only skills' ones, in one cache lookup.
        gated = (np.flatnonzero(~(rows.closest >= p.token_gate)) if use_tokens and encoded is not None
                 else np.zeros(0, dtype=np.int64))
        gated_hits = {rows.codes[h.payload[S.F_SKILL_ID]]: h for r in gated.tolist() for h in skill_hits[r]}
        hit_keys = {code: SkillVectors.key(h.id, h.payload) for code, h in gated_hits.items()}  # per skill, not hit
        visible = self._visible_skills(rows.knn_only_ids(), tenant)
        skill_vectors = self.skill_vectors.get(list({*visible.values(), *hit_keys.values()}))
        # A skill changed between the two reads has no vector under its key: it votes and does not rank this time.
        visible = {sid: key for sid, key in visible.items() if key in skill_vectors}
        extra_labels = {sid: key[1] for sid, key in visible.items()}
        extra_vectors = (np.stack([skill_vectors[key] for key in visible.values()]) if visible
                         else np.zeros((0, self.encoder.dimension), dtype=np.float32))
        extra_at = rows.extra_rows(extra_labels)  # (sentences, candidates): row in extra_vectors, -1 if none
        # b: the engine's score for the skills query's hits; for skills only the kNN side found, the exact cosine
        # from their vectors (one matrix product for the batch). Those without a vector are skills
        # this tenant cannot see (or deleted ones): they vote, never rank.
        b = np.zeros(rows.candidates.shape)
        b[rows.is_top] = rows.top_scores
        extra_b = pooled @ extra_vectors.T
        knn_found = extra_at >= 0
        b[knn_found] = extra_b[np.nonzero(knn_found)[0], extra_at[knn_found]]
        ranked = rows.is_top | knn_found
        # With tokens, the pool the token score reorders does not grow with `top`: the top 32 by cosine and the
        # voters' skills. Further hits keep their cosine and rank after the pool, in cosine order, so the first
        # results are the same whether 10 or 100 are asked for (`eval` ranks 100 deep: it measures what `map` gives).
        later = rows.past_pool(max(p.n_candidates or 0, MIN_TOKEN_CANDIDATES)) if use_tokens else None
        attention: dict[int, np.ndarray] = {}
        clause = None
        if later is not None and encoded is not None and gated.size:
            b[gated], attention, clause_of = self._token_scores(
                texts, encoded, gated, b[gated], rows, extra_vectors, extra_at[gated], hit_keys, skill_vectors,
                later[gated])
            if clause_of is not None:
                clause = np.full(rows.candidates.shape, -1, dtype=np.int64)
                clause[gated] = clause_of
        params = {"knnbe": p, "knn": replace(p, lam=0.0), "bi-encoder": replace(p, lam=1.0)}[mode]
        scored = score_batch(b, ranked, rows.vote_sims, rows.vote_cols, params, later)
        if clause is not None and later is not None:
            # Only what may rank in the pool moves: not padding, not a voter's skill this tenant cannot see, not a
            # hit past the pool.
            scored = cover_clauses(scored, np.where(ranked & ~later, clause, -1), p.clause_depth)
        shown = np.minimum(ranked.sum(axis=1), top)
        return self._results(texts, scored, rows, shown, skill_hits, voters, extra_labels, attention,
                             encoded.spans if encoded is not None else None)

    @staticmethod
    def _results(texts: Sequence[str], scored: Scored, rows: Candidates, shown: np.ndarray, hits: list[list[Hit]],
                 voters: Voters, extra_labels: dict[str, str], attention: dict[int, np.ndarray],
                 spans: Sequence[list[tuple[int, int]]] | None) -> list[SentenceResult]:
        """The result objects: each sentence's first `shown` candidates in `scored.order`, each with the voters
        for its skill as evidence (best first; equal similarities, one text under two spellings the tokenizer folds,
        by text, so that the order does not depend on which tied point an engine returned first) and, with token
        matching, the words it attended to. Which voter is whose evidence is found for the batch at once; only the
        objects returned are made one by one."""
        n, width = len(texts), int(shown.max(initial=0))
        chosen = scored.order[:, :width]
        shows = np.arange(width) < shown[:, None]
        # match[row, column]: the rank among the row's results of the candidate in that column; -1 if not shown.
        match = np.full((n, rows.candidates.shape[1] + 1), -1, dtype=np.int64)
        match[np.nonzero(shows)[0], chosen[shows]] = np.nonzero(shows)[1]
        votes_for = match[np.arange(n)[:, None], np.where(rows.vote_cols >= 0, rows.vote_cols, -1)]
        row, voter = np.nonzero(votes_for >= 0)
        rank = votes_for[row, voter]
        similarity = voters.scores[row, voter]
        order = np.lexsort((voter, -similarity, rank, row))  # voters come best first; the voter keeps it stable
        row, voter, rank, similarity = row[order], voter[order], rank[order], similarity[order]
        group = row * max(width, 1) + rank
        # map() over two lists builds the objects at C speed: half the time of a comprehension over zip.
        evidence = list(map(Evidence, map(voters.texts.__getitem__, voters.slots[row, voter].tolist()),
                            similarity.tolist()))
        bounds = np.searchsorted(group, np.arange(n * max(width, 1) + 1)).tolist()
        same = np.flatnonzero((group[1:] == group[:-1]) & (similarity[1:] == similarity[:-1]))
        for g in np.unique(group[same]).tolist():  # exact ties: by text (rare)
            evidence[bounds[g]: bounds[g + 1]] = sorted(evidence[bounds[g]: bounds[g + 1]],
                                                        key=lambda e: (-e.similarity, e.text))
        score, bi, knn = (scored.score[np.nonzero(shows)[0], chosen[shows]].tolist(),
                          scored.bi_encoder[np.nonzero(shows)[0], chosen[shows]].tolist(),
                          scored.knn[np.nonzero(shows)[0], chosen[shows]].tolist())
        counts = voters.counts.tolist()
        closest = rows.closest.tolist()
        ids, candidates = rows.ids, rows.candidates
        results, at = [], 0
        for r, text in enumerate(texts):
            cols = chosen[r, : shown[r]].tolist()
            weights = attention.get(r)
            words = (attended_words(text, spans[r], weights[:, cols]) if weights is not None and spans and spans[r]
                     else [None] * len(cols))
            row_hits, base = hits[r], r * max(width, 1)
            matches = []
            for i, (c, matched) in enumerate(zip(cols, words)):
                skill_id = ids[candidates[r, c]]
                matches.append(SkillMatch(
                    id=skill_id, label=row_hits[c].payload[S.F_LABEL] if c < len(row_hits) else extra_labels[skill_id],
                    score=score[at], bi_encoder=bi[at], knn=knn[at],
                    evidence=evidence[bounds[base + i]: bounds[base + i + 1]], tokens=matched,
                ))
                at += 1
            results.append(SentenceResult(text=text, skills=matches,
                                          nearest_memory=closest[r] if counts[r] else None))
        return results

    def _token_scores(self, texts: Sequence[str], encoded: Encoded, gated: np.ndarray, pooled_b: np.ndarray,
                      rows: Candidates, extra_vectors: np.ndarray, extra_at: np.ndarray,
                      keys: dict[int, tuple[str, str, str]], found: dict[tuple[str, str, str], np.ndarray],
                      past_pool: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray | None]:
        """b blended with the token-attention score for the `gated` sentences' candidates, each one's attention
        (its tokens, candidates), and, with clause coverage on, each candidate's clause (`clause_of_candidates`;
        None when no gated sentence has two clauses). A candidate whose vector is gone (deleted or renamed since
        the query), and a hit past the pool, keep their cosine. `keys` are the hits' vector keys by skill code,
        `found` the vectors read for them."""
        dimension = self.encoder.dimension
        # One table: the hits' vectors by skill code, then the kNN-only skills' vectors.
        table = np.zeros((len(rows.ids) + len(extra_vectors) + 1, dimension), dtype=np.float32)
        known_code = np.zeros(len(table), dtype=bool)
        for code, key in keys.items():
            v = found.get(key)
            if v is not None:
                table[code], known_code[code] = v, True
        table[len(rows.ids): len(rows.ids) + len(extra_vectors)] = extra_vectors
        known_code[len(rows.ids): len(rows.ids) + len(extra_vectors)] = True
        codes = rows.candidates[gated]
        at = np.where(rows.is_top[gated], codes, np.where(extra_at >= 0, len(rows.ids) + extra_at, len(table) - 1))
        known = known_code[at] & ~past_pool
        states = [encoded.states[r] for r in gated.tolist()]
        lengths = np.fromiter((len(x) for x in states), dtype=np.int64, count=len(states))
        t = np.empty(pooled_b.shape)
        weights: dict[int, np.ndarray] = {}
        # Each token's clause, for the sentences that have two or more (most have one: nothing to cover).
        token_clauses = ({g: c for g, r in enumerate(gated.tolist())
                          if (c := clause_of_tokens(texts[r], encoded.spans[r][: lengths[g]])).max(initial=-1) >= 0}
                         if self.params.clause_depth else {})
        clause = np.full(pooled_b.shape, -1, dtype=np.int64) if token_clauses else None
        by_length = np.argsort(lengths, kind="stable")
        for start in range(0, len(gated), TOKEN_CHUNK):
            group = by_length[start : start + TOKEN_CHUNK]
            width = int(lengths[group].max())
            padded = np.zeros((len(group), width, dimension), dtype=np.float32)
            for i, g in enumerate(group.tolist()):
                padded[i, : lengths[g]] = states[g]
            present = np.arange(width) < lengths[group, None]
            t[group], attention = token_attention_batch(padded, present, table[at[group]],
                                                        self.params.token_temperature)
            for i, g in enumerate(group.tolist()):
                weights[int(gated[g])] = attention[i, : lengths[g]]
            split = [i for i, g in enumerate(group.tolist()) if g in token_clauses]
            if clause is not None and split:
                token_clause = np.full((len(split), width), -1, dtype=np.int64)
                for j, i in enumerate(split):
                    c = token_clauses[int(group[i])]
                    token_clause[j, : len(c)] = c
                clause[group[split]] = clause_of_candidates(attention[split], token_clause)
        t = np.where(known, t, pooled_b)
        blended = blend_bi_encoder(pooled_b, t, self.params.token_weight)
        return blended, weights, clause

    def _has_marks(self, tenant: str | None) -> bool:
        """Whether `tenant` may have hidden global points, read from the store's registry on every call (cheaply:
        a file's stat on the embedded store), so that a mark another process just made counts at once. Filtering
        on the hide key of a tenant that never hid anything would cost 4 to 5 times the query (no index for it)."""
        if not is_tenant(tenant):
            return False
        documents = self.store.documents()
        version = documents.version(S.HIDERS)
        cached_version, hiders = self._hiders
        if version is None or version != cached_version:
            hiders = frozenset(documents.all(S.HIDERS))
            self._hiders = (version, hiders)
        return tenant in hiders

    def _visible_skills(self, skill_ids: Sequence[str], tenant: str | None) -> dict[str, tuple[str, str, str]]:
        """The given skills that `tenant` may see, as {skill id: its vector's key (SkillVectors.key)}, which
        holds the label. Skills it may not see (another tenant's, retired, hidden) are simply absent."""
        if not skill_ids:
            return {}
        ids = [S.skill_point_id(t, sid) for t in layers(tenant) for sid in skill_ids]
        fields = [S.F_SKILL_ID, S.F_LABEL, S.F_UPDATED_AT, S.F_TENANT, S.F_STATUS]
        if is_tenant(tenant):
            fields.append(S.hide_key(tenant))
        # Payloads only: the vectors come from the skill-vector cache (most of a batch's kNN-only skills were an
        # earlier batch's too), keyed by label and stamp, so a skill renamed since is read afresh.
        records = self.store.retrieve(S.SKILLS, ids, payload=fields)
        return {r.payload[S.F_SKILL_ID]: SkillVectors.key(r.id, r.payload) for r in records
                if skill_is_visible(r.payload, tenant) and S.has_texts(r.payload, S.F_SKILL_ID, S.F_LABEL)}
