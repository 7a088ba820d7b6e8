"""Unseen skills: the memory of some skills is taken out and put back; the store must end exactly as it began."""

from __future__ import annotations

import json

import numpy as np
import pytest

from knnbe_qdrant import InvalidInputError, SkillMapper
from knnbe_qdrant import _schema as S
from knnbe_qdrant.evaluation import run_eval
from knnbe_qdrant.evaluation.unseen import pick_skills, unseen_skills
from tests.helpers import ANCHOR_LABELS, BACKENDS, build_small

GOLD = [
    ("We need strong Python skills for our backend services.", ["Python (computer programming)"]),
    ("You write complex SQL queries against our warehouse.", ["SQL"]),
    ("Experience running PostgreSQL in production.", ["PostgreSQL"]),
    ("You will provide nursing care to patients on the ward.", ["implement nursing care"]),
    ("Prepare fish dishes for the evening service.", ["cook fish"]),
    ("Lead a small team of engineers.", ["lead a team"]),
]


def _memory_state(store):
    ids = sorted(r.id for r in store.scroll(S.MEMORY, payload=False))
    records = {r.id: r for r in store.retrieve(S.MEMORY, ids, with_vectors=True)}
    return [records[i].payload for i in ids], np.stack([records[i].vector for i in ids])


def assert_same_memory(store, state):
    payloads, vectors = _memory_state(store)
    assert payloads == state[0]
    # Cosine collections normalise vectors on upsert; re-normalising a unit vector may move its last bit.
    np.testing.assert_allclose(vectors, state[1], atol=1e-6)


@pytest.fixture(scope="module")
def anchors(small_skills):
    """Only the skills the sentences are about: the tests edit their store, so each builds its own, small one."""
    return [s for s in small_skills if s.label in ANCHOR_LABELS]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path, encoder, anchors):
    s = build_small(request.param, tmp_path, encoder, anchors)
    yield s
    s.close()


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps({"sentence": s, "labels": labels}) + "\n" for s, labels in GOLD))
    return path


def test_memory_is_restored_exactly_and_only_the_removed_skills_lose_votes(store, encoder, bench, tmp_path):
    mapper = SkillMapper(store, encoder, exact=True)
    before_state = _memory_state(store)
    untouched = run_eval(mapper, bench, ("knnbe", "knn"))
    backup = tmp_path / "backup.jsonl"

    r = unseen_skills(mapper, [bench], fraction=1.0, backup=backup)

    assert r["skills"] == len(GOLD) and r["sentences"] == len(GOLD) and r["memory_points"] > 0
    # Without their memory the vote goes to other skills (gold ones then rank by b alone, below every voted skill);
    # with the same points back, every score is what it was.
    assert r["before"]["knn"]["mrr"] < untouched["knn"]["mrr"]
    assert r["before"]["knnbe"]["mrr"] < untouched["knnbe"]["mrr"]
    for mode in ("knnbe", "knn"):
        assert r["after"][mode] == untouched[mode]
    assert_same_memory(store, before_state)
    assert not backup.exists()


def test_an_error_mid_run_still_puts_the_memory_back(store, encoder, bench, tmp_path):
    mapper = SkillMapper(store, encoder, exact=True)
    before_state = _memory_state(store)
    backup = tmp_path / "backup.jsonl"
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        unseen_skills(mapper, [bench], fraction=1.0, backup=backup, modes=("no-such-mode",))
    assert_same_memory(store, before_state)
    rows = [json.loads(line) for line in backup.read_text().splitlines()]
    # The backup names exactly the removed points, in the form `memory import` reads.
    assert rows and {"text", "skill", "source"} <= set(rows[0])
    ids = sorted({S.memory_point_id(S.GLOBAL_TENANT, row["skill"], row["text"]) for row in rows})
    assert len(store.retrieve(S.MEMORY, ids, payload=False)) == len(rows)


def test_skill_sample_depends_on_the_seed_only():
    golds = [{"a", "b"}, {"c"}, {"d", "unknown:x"}]
    first = pick_skills(golds, 0.5, seed=3)
    assert first == pick_skills(list(reversed(golds)), 0.5, seed=3)
    assert len(first) == 2 and "unknown:x" not in first
    with pytest.raises(ValueError, match="fraction"):
        pick_skills(golds, 0.0, seed=0)


def test_cli_prints_before_and_after(tmp_path, encoder, anchors, bench, capsys):
    from knnbe_qdrant.cli import main

    build_small("embedded", tmp_path, encoder, anchors).close()
    assert main(["--store", str(tmp_path / "store"), "unseen", str(bench), "--fraction", "1",
                 "--backup", str(tmp_path / "b.jsonl"), "--exact"]) == 0
    out = capsys.readouterr().out
    assert "memory of those skills removed" in out and "upserted back" in out and f"{len(GOLD)} sentences" in out
