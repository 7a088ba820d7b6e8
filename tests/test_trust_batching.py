"""Trust in the map batcher: one tenant's flood, a big pass or a fault of one request cannot hold up or fail another
request, with one worker or two (issues 20 and 22; the rest of the trust suite is named in test_trust.py)."""

from __future__ import annotations

import threading
import time

import pytest

from knnbe_qdrant import Curator, SkillMapper
from tests.helpers import (
    BACKENDS,
    PYTHON_ID,
    SQL,
    build_small,
    race,
)


# ---- fairness ---------------------------------------------------------------------------------------------------
def test_one_tenants_flood_does_not_hold_another_tenants_request_behind_all_of_it(built_stores, encoder):
    from knnbe_qdrant.service.batching import MapBatcher

    batcher = MapBatcher(SkillMapper(built_stores["embedded"], encoder), max_sentences=32)
    try:
        flood = [batcher.submit([f"Writing SQL queries, report {i}.{j}" for j in range(32)], 3, "acme")
                 for i in range(12)]
        [mine] = batcher.submit(["Programming in Python"], 3, "beta").result(timeout=120)
        ahead = sum(f.done() for f in flood)
        assert mine.skills[0].id == PYTHON_ID
        assert ahead <= 4, f"{ahead} of the other tenant's 12 requests were answered first"  # FIFO: 12
        for f in flood:
            f.result(timeout=120)
    finally:
        batcher.close()


class _Gated(SkillMapper):
    """The real mapper, whose first encoder call waits for the test's go: the moment a big pass is being encoded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []
        self.first, self.go, self.released = threading.Event(), threading.Event(), threading.Event()

    def encode(self, texts):
        self.calls.append(len(texts))
        out = super().encode(texts)
        if len(self.calls) == 1:
            self.first.set()
            self.go.wait(30)
            self.released.set()
        return out


def test_a_one_sentence_request_waits_for_one_chunk_of_a_big_pass_not_all_of_it(built_stores, encoder):
    from knnbe_qdrant.service.batching import MapBatcher

    mapper = _Gated(built_stores["embedded"], encoder)
    # Lengths out of order, so the chunks (shortest first) hold them in another order than the request.
    big_texts = [SQL, "Python", "Programming in Python for data analysis and automation scripts", "SQL",
                 "Writing SQL", "Developing web applications in Python", SQL + " every day", "Python programming",
                 "Relational databases", "Python scripts", "Querying databases with SQL", "Python"]
    want = [[s.id for s in r.skills] for r in SkillMapper(built_stores["embedded"], encoder).map(big_texts, top=3)]
    batcher = MapBatcher(mapper, chunk=4)
    try:
        done: list[str] = []
        big = batcher.submit(big_texts, 3, None)
        big.add_done_callback(lambda _: done.append("big"))
        assert mapper.first.wait(60)  # the big pass's first chunk is encoded; the small request comes now
        small = batcher.submit(["Programming in Python"], 3, None)
        small.add_done_callback(lambda _: done.append("small"))
        mapper.go.set()
        assert small.result(timeout=120)[0].skills[0].id == PYTHON_ID
        got = [[s.id for s in r.skills] for r in big.result(timeout=120)]
        assert done == ["small", "big"]
        assert mapper.calls == [4, 1, 4, 4]  # one chunk, the small request, the rest of the big pass
        # Each sentence's answer is its own, in the request's order, as the library gives it (top skill exactly;
        # the three only up to encoder noise between batch shapes, which can swap a near tie).
        assert [g[0] for g in got] == [w[0] for w in want]
        assert sum(g == w for g, w in zip(got, want)) >= len(want) - 1
    finally:
        mapper.go.set()
        batcher.close()


def test_with_two_workers_a_one_sentence_request_is_answered_while_the_other_is_held_inside_a_big_pass(
        built_stores, encoder):
    """The second worker takes what comes while the first encodes: the one-sentence request is answered while the
    big pass's first encoder call is still held (with one worker it waits for that call, the test above)."""
    from knnbe_qdrant.service.batching import MapBatcher

    mapper = _Gated(built_stores["embedded"], encoder)
    batcher = MapBatcher(mapper, chunk=4, workers=2)
    try:
        big = batcher.submit([SQL, "Python", "Writing SQL", "Python scripts", SQL + " daily", "Relational databases"],
                             3, None)
        assert mapper.first.wait(60)
        small = batcher.submit(["Programming in Python"], 3, None)
        assert small.result(timeout=25)[0].skills[0].id == PYTHON_ID
        assert not mapper.released.is_set() and not big.done()  # the big pass's first call is held still
        mapper.go.set()
        assert [r.skills[0].id for r in big.result(timeout=120)][1] == PYTHON_ID
    finally:
        mapper.go.set()
        batcher.close()
    assert not any(t.is_alive() for t in batcher._threads)  # close ends every worker


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_workers_answer_every_request_with_its_own_results_for_its_own_tenant(backend, encoder, small_skills,
                                                                                   tmp_path):
    """Twelve clients, three tenants (one with a skill of its own that only its requests may rank), requests of one
    to five sentences in random orders through two workers: each answer is what the library gives that request."""
    import random

    from knnbe_qdrant.service.batching import MapBatcher

    store = build_small(backend, tmp_path, encoder, small_skills[:20])
    curator = Curator(store, encoder)
    curator.add_skill("acme:kafka", "Apache Kafka event streaming", tenant="acme")
    curator.add_sentence("Building Kafka pipelines", "acme:kafka", tenant="acme")
    mapper = SkillMapper(store, encoder, exact=True)
    pool = [SQL, "Python", "Writing SQL", "Programming in Python", "Building Apache Kafka event streaming pipelines",
            "Relational databases", "Python scripts for data analysis", "Kafka streaming"]
    want = {(t, s): [x.id for x in r.skills] for t in (None, "acme", "beta")
            for s, r in zip(pool, mapper.map(pool, top=5, tenant=t))}
    assert "acme:kafka" in want[("acme", pool[4])] and "acme:kafka" not in want[("beta", pool[4])]
    batcher = MapBatcher(mapper, workers=2, max_wait_s=0.002)
    wrong: list[tuple] = []

    def client(seed):
        rng = random.Random(seed)
        for _ in range(6):
            tenant = rng.choice([None, "acme", "beta"])
            sentences = rng.sample(pool, rng.randint(1, 5))
            for s, r in zip(sentences, batcher.submit(sentences, 5, tenant).result(timeout=120)):
                got = [x.id for x in r.skills]
                if r.text != s or got[0] != want[(tenant, s)][0] or len(set(got) ^ set(want[(tenant, s)])) > 2:
                    wrong.append((tenant, s, got, want[(tenant, s)]))

    try:
        race(12, client)
    finally:
        batcher.close()
        store.close()
    assert not wrong, wrong[:3]


def test_another_tenants_flood_in_the_same_pass_holds_a_lone_request_for_a_chunk_not_the_pass(built_stores, encoder):
    """A tenant's 64 long one-sentence requests and another tenant's one request went in one pass, encoded whole and
    answered together: the lone request waited for all of it (up to 7 s in a real service, 2026-12-07)."""
    from knnbe_qdrant.service.batching import MapBatcher

    mapper = _Gated(built_stores["embedded"], encoder)
    batcher = MapBatcher(mapper, chunk=4)
    try:
        done: list[str] = []
        held = batcher.submit(["Python"], 3, "flood")  # its encoder call waits for the go: the rest queue behind it
        assert mapper.first.wait(60)
        # Long texts: a chunk is cut at PREEMPT_CHARS characters too, so each of these is a chunk of its own.
        long = " ".join([SQL] * 15)[:900]
        flood = [batcher.submit([f"{i} {long}"], 3, "flood") for i in range(12)]
        for f in flood:
            f.add_done_callback(lambda _: done.append("flood"))
        lone = batcher.submit(["Programming in Python"], 3, "lone")
        lone.add_done_callback(lambda _: done.append("lone"))
        time.sleep(0.1)  # the lanes gather both tenants' requests, queued meanwhile, into one pass
        mapper.go.set()
        assert lone.result(timeout=120)[0].skills[0].id == PYTHON_ID
        assert all(f.result(timeout=120)[0].skills for f in [held, *flood])
        assert done[0] == "lone", done  # the fewest sentences first, answered before the flood's first one
        assert mapper.calls[:2] == [1, 1] and mapper.calls[2:] == [1] * 12, mapper.calls
    finally:
        mapper.go.set()
        batcher.close()


def test_a_chunk_the_encoder_refuses_fails_only_the_request_that_brought_it(built_stores, encoder):
    from knnbe_qdrant.service.batching import MapBatcher

    poison = "poisoned text that the encoder refuses"

    class Refusing(SkillMapper):
        def encode(self, texts):
            if poison in texts:
                raise TypeError("the tokenizer cannot read this text")
            return super().encode(texts)

    batcher = MapBatcher(Refusing(built_stores["embedded"], encoder), chunk=2, max_wait_s=0.5)
    try:
        good = [batcher.submit([SQL, f"Python scripts {i}", "Writing SQL"], 3, t) for i, t in enumerate("ab")]
        bad = batcher.submit(["Python", poison, SQL], 3, "a")  # gathered with the good ones: one pass, in chunks
        with pytest.raises(TypeError, match="cannot read"):
            bad.result(timeout=120)
        for f in good:
            assert [r.skills[0].id for r in f.result(timeout=120)][1] == PYTHON_ID
        # The worker lives on.
        assert batcher.submit(["Programming in Python"], 3, None).result(timeout=120)[0].skills[0].id == PYTHON_ID
    finally:
        batcher.close()


def test_a_fault_inside_a_small_pass_between_chunks_fails_that_pass_alone(built_stores, encoder):
    """Whatever breaks the batcher's own work in a small pass served between two chunks of a larger one (here the
    metrics hook), the small requests get the error rather than waiting forever, the larger pass is answered, and
    the worker goes on."""
    from knnbe_qdrant.service.batching import MapBatcher

    mapper = _Gated(built_stores["embedded"], encoder)
    calls: list[int] = []

    def on_batch(requests: int, sentences: int) -> None:
        calls.append(sentences)
        if len(calls) == 2:
            raise RuntimeError("metrics broke")

    batcher = MapBatcher(mapper, chunk=4, on_batch=on_batch)
    try:
        big = batcher.submit([SQL, "Python scripts", "Writing SQL", "Python", SQL + " daily", "Python code"], 3, None)
        assert mapper.first.wait(60)
        small = batcher.submit(["Programming in Python"], 3, None)
        mapper.go.set()
        with pytest.raises(RuntimeError, match="metrics broke"):
            small.result(timeout=120)
        assert [r.skills[0].id for r in big.result(timeout=120)][1] == PYTHON_ID
        assert batcher.submit(["Programming in Python"], 3, None).result(timeout=120)[0].skills[0].id == PYTHON_ID
    finally:
        mapper.go.set()
        batcher.close()


def test_a_one_sentence_request_gathered_with_bigger_ones_is_answered_first(built_stores, encoder):
    from knnbe_qdrant.service.batching import MapBatcher, _Job, _Lanes

    lanes = _Lanes()
    for sentences, tenant in [("abc", None), ("d", None), ("ef", "t"), ("g", "t"), ("hi", None)]:
        lanes.put(_Job(list(sentences), 3, tenant))
    passes = ["|".join("".join(j.sentences) for j in lanes.take(max_small=256, max_large=4)) for _ in range(3)]
    # Small ones first; then larger ones up to 4 sentences, round-robin by tenant (never split); then the rest.
    assert passes == ["d|g", "abc|ef", "hi"]
    # Neither lane starves: while both wait, passes alternate.
    for sentences in ("jkl", "m", "nop"):
        lanes.put(_Job(list(sentences), 3, None))
    assert "".join(lanes.take(max_small=256, max_large=3)[0].sentences) == "m"
    lanes.put(_Job(["q"], 3, None))
    assert "".join(lanes.take(max_small=256, max_large=3)[0].sentences) == "jkl"  # not the newer small one
    assert "".join(lanes.take(max_small=256, max_large=3)[0].sentences) == "q"
    lanes.close()
    assert "".join(lanes.take(max_small=256, max_large=3)[0].sentences) == "nop"  # closed: what is queued still goes
    assert lanes.take(max_small=256) is None
    batcher = MapBatcher(SkillMapper(built_stores["embedded"], encoder), max_wait_s=0.5)
    try:
        done: list[str] = []
        big = batcher.submit([f"Writing SQL queries, report {j}" for j in range(64)], 3, None)
        small = batcher.submit(["Programming in Python"], 3, None)  # gathered with the big one (0.5 s window)
        big.add_done_callback(lambda _: done.append("big"))
        small.add_done_callback(lambda _: done.append("small"))
        assert small.result(timeout=120)[0].skills[0].id == PYTHON_ID
        big.result(timeout=120)
        assert done == ["small", "big"]
    finally:
        batcher.close()
