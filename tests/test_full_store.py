"""The full product path on the shipped data: build all of ESCO and the default memory, map, bench.

Slow (minutes): run with `scripts/test.sh --slow`.
"""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from knnbe_qdrant._process import THREAD_VARIABLES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def cli(*args, store):
    env = {**os.environ, "KNNBE_STORE": str(store)}
    env.pop("QDRANT_URL", None)
    return subprocess.run([sys.executable, "-m", "knnbe_qdrant", *map(str, args)], capture_output=True, env=env,
                          check=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "store"
    r = cli("build", "--no-progress", store=path)
    assert r.returncode == 0, r.stderr.decode()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["state"] == "ready"
    assert manifest["counts"] == {"skills": 13891, "memory": 129831}
    return path


def test_sample_posting_maps_to_the_expected_skills(store):
    r = cli("map", "--json", "--top", "5", "--file", ROOT / "examples" / "job_posting.txt", store=store)
    assert r.returncode == 0, r.stderr.decode()
    results = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert len(results) == 5
    labels = {obj["text"][:20]: [s["label"] for s in obj["skills"]] for obj in results}
    assert "PostgreSQL" in labels["You will design and "]
    assert {"English", "German"} & set(labels["Fluency in English i"])


def map_json(store, *args):
    r = cli("map", "--json", *args, store=store)
    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


REST = "You will design and maintain REST APIs in Python and write efficient SQL queries against PostgreSQL."
LANGUAGES = "Fluency in English is required; German is an advantage."


@pytest.mark.parametrize("decompose", ["--decompose", "--no-decompose"])
def test_each_clause_of_a_sentence_finds_its_own_skill(store, decompose):
    # Without clause coverage Python ranked 7th (8th with decomposition) and English 4th to 5th: the vote of the
    # sentence's nearest memory sentences, which speak of its dominant topic, outweighed the clause's own match.
    rest, languages = map_json(store, "--top", "3", decompose, REST, LANGUAGES)
    assert "Python (computer programming)" in [s["label"] for s in rest["skills"]], rest
    assert "PostgreSQL" in [s["label"] for s in rest["skills"]], rest
    assert "English" in [s["label"] for s in languages["skills"]], languages
    assert "German" in [s["label"] for s in languages["skills"]], languages
    # A clause naming nothing brings nothing: every match attended to words of the clauses that name something.
    for result in (rest, languages):
        for skill in result["skills"]:
            assert not {"You", "will", "design"} & set(skill["tokens"]), skill


def test_a_clause_that_names_no_skill_brings_none(store):
    [whole] = map_json(store, "--top", "20", "--decompose", REST)
    assert whole["skills"] and not [s for s in whole["skills"] if s.get("piece") == "You will design"]


def test_rebuild_finds_everything_stored(store):
    r = cli("build", "--no-progress", store=store)
    assert r.returncode == 0, r.stderr.decode()
    assert "129831 memory sentences" in r.stdout.decode()


def test_bench_reports_the_documented_fields(store):
    r = cli("bench", "--json", "--sentences", "256", "--repeats", "1", store=store)
    assert r.returncode == 0, r.stderr.decode()
    report = json.loads(r.stdout)
    for key in ("bi_encoder_sentences_per_s", "knnbe_sentences_per_s", "default_posting_sentences_per_s",
                "decompose_sentences_per_s",
                "decompose_posting_sentences_per_s", "encode_ms_per_sentence", "qdrant_ms_per_sentence",
                "mapping_cpu_ms_per_sentence"):
        assert report[key] > 0
    # Each pass size's cost; a pass of one sentence costs more per sentence than one of 64 (its fixed costs).
    costs = [report[f"pass_of_{n}_ms_per_sentence"] for n in (1, 8, 16, 64)]
    assert all(c > 0 for c in costs) and costs[0] > costs[-1]
    assert report["default_profile"] == "kNNBE + token matching"
    assert report["memory"] == 129831
    assert 0.9 <= report["hnsw_memory_recall_at_k"] <= 1.0
    if not any(name in os.environ for name in THREAD_VARIABLES):  # else the thread count is the environment's
        assert report["blas_threads"] == 1


def _damage(store: Path, how: str) -> None:
    """Damage the memory's one indexed segment as the issue's probes did, on a store big enough to have one."""
    [segment] = [m.parent.parent for m in store.glob("memory_g*/segments/*/vector_storage/matrix.dat")]
    rng = random.Random(3)
    target = {"truncated": "vector_storage/matrix.dat", "random bytes": "vector_storage/matrix.dat",
              "quantized data": "vector_storage/quantized.data", "payload page": "payload_storage/page_0.dat"}[how]
    path = segment / target
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if how == "truncated":
            f.truncate(size // 2)
        elif how == "quantized data":
            f.write(os.urandom(size))
        else:
            share = 10 if how == "random bytes" else 500
            for _ in range(size // share // 64):
                f.seek(rng.randrange(size - 64))
                f.write(os.urandom(64))


@pytest.mark.parametrize("how", ["truncated", "random bytes", "quantized data", "payload page"])
def test_a_damaged_full_store_is_refused_not_answered(store, tmp_path, how):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    _damage(copy, how)
    r = cli("map", "--json", "Experience with Python programming and SQL databases", store=copy)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err, err
    assert "is damaged" in err and "knnbe-qdrant restore" in err and "build --force" in err, err
