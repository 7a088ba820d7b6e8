"""Whole postings: splitting, the aggregation rule, streaming output, resuming, formats, malformed rows."""

from __future__ import annotations

import csv
import json

import pytest

from knnbe_qdrant._decompose import pieces
from knnbe_qdrant._results import SentenceResult, SkillMatch
from knnbe_qdrant.postings import Posting, aggregate, split_sentences
from tests.helpers import run

POSTINGS = [
    {"id": "p1", "text": "We build REST services in Python. You will write SQL queries every day."},
    {"id": "p2", "text": "Nurses wanted!\n- Provide nursing care to patients\n- Work in shifts"},
    {"id": "p3", "text": "Fluent English is required. German is a plus, e.g. for customers."},
    {"id": "p4", "text": "Lead a team of five engineers; communicate with customers."},
]
MULTI = "You will design and maintain REST APIs in Python and write efficient SQL queries against PostgreSQL."


def test_split_sentences_uses_lines_bullets_and_a_real_segmenter():
    assert split_sentences("Dr. Smith leads the team, e.g. on Mondays. We use Python.\n• SQL\n- Docker") == [
        "Dr. Smith leads the team, e.g. on Mondays.", "We use Python.", "SQL", "Docker"]
    assert split_sentences("...") == []


def test_posting_score_is_the_best_sentence_score_and_support_lists_the_sentences():
    def match(sid, score):
        return SkillMatch(id=sid, label=sid.upper(), score=score, bi_encoder=score, knn=0.0)

    results = [
        SentenceResult("s1", [match("a", 0.5), match("b", 0.4)]),
        SentenceResult("s2", [match("b", 0.7), match("c", 0.5)]),
    ]
    record = aggregate(Posting("p", "s1 s2"), results, top=10)
    assert [(s["id"], s["score"]) for s in record["skills"]] == [("b", 0.7), ("a", 0.5), ("c", 0.5)]
    assert record["skills"][0]["sentences"] == [{"text": "s2", "score": 0.7}, {"text": "s1", "score": 0.4}]
    # a and c tie on 0.5 with one sentence each: the id breaks the tie
    assert aggregate(Posting("p", ""), results, top=1)["skills"][0]["id"] == "b"


@pytest.fixture(scope="module")
def postings_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("postings") / "postings.jsonl"
    lines = [json.dumps(p) for p in POSTINGS[:2]] + ['{"id": "broken", "text": 42}', "{not json"]
    lines += [json.dumps(p) for p in POSTINGS[2:]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_map_postings_writes_one_record_per_posting_and_reports_malformed(cli_store, postings_file, tmp_path):
    out = tmp_path / "out.jsonl"
    r = run("map-postings", postings_file, out, "--no-progress", store=cli_store)
    assert r.returncode == 0, r.stderr.decode()
    records = read_jsonl(out)
    assert [rec["id"] for rec in records] == ["p1", "p2", "p3", "p4"]
    err = r.stderr.decode()
    assert f"{postings_file}:line 3 (id broken): 'text' is missing, empty or not text" in err
    assert f"{postings_file}:line 4: not valid JSON" in err
    p1 = {s["label"] for s in records[0]["skills"]}
    assert {"Python (computer programming)", "SQL"} <= p1
    assert records[1]["sentences"] == 3  # "Nurses wanted!" and the two bullets
    for rec in records:
        scores = [s["score"] for s in rec["skills"]]
        assert scores == sorted(scores, reverse=True)
        assert all(s["sentences"] for s in rec["skills"])


def test_killed_run_resumes_to_the_same_output(cli_store, postings_file, tmp_path):
    full = tmp_path / "full.jsonl"
    assert run("map-postings", postings_file, full, "--no-progress", store=cli_store).returncode == 0
    resumed = tmp_path / "resumed.jsonl"
    lines = full.read_bytes().splitlines(keepends=True)
    resumed.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # one posting done, the next torn mid-write
    record = tmp_path / "full.jsonl.run.json"
    (tmp_path / "resumed.jsonl.run.json").write_bytes(record.read_bytes())  # what the killed run had recorded
    r = run("map-postings", postings_file, resumed, "--no-progress", store=cli_store)
    assert r.returncode == 0, r.stderr.decode()
    assert b"1 already there" in r.stdout
    assert resumed.read_bytes() == full.read_bytes()
    # Another run (another tenant) must not resume into it, nor into an output with no record of its run.
    r = run("map-postings", postings_file, resumed, "--tenant", "beta", "--no-progress", store=cli_store)
    assert r.returncode == 2 and b"written by another run" in r.stderr and b"Traceback" not in r.stderr
    record.unlink()
    r = run("map-postings", postings_file, full, "--no-progress", store=cli_store)
    assert r.returncode == 2 and b"no record of the run" in r.stderr


def test_bad_postings_inputs_are_reported_not_fatal(cli_store, tmp_path):
    src = tmp_path / "ads.csv"
    src.write_bytes(b"id,text\n1,We write Python.\n2,Bad byte \xff here.\n3,SQL every day.\n")
    out = tmp_path / "out.jsonl"
    r = run("map-postings", src, out, "--no-progress", store=cli_store)
    assert r.returncode == 0, r.stderr.decode()
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["1", "3"]
    assert f"{src}:line 3 (id 2): not UTF-8 text".encode() in r.stderr
    rows = tmp_path / "ids.jsonl"
    rows.write_text('{"id": [1, 2], "text": "x y"}\n{"id": true, "text": "x y"}\n{"id": 7, "text": "SQL work"}\n')
    r = run("map-postings", rows, tmp_path / "ids-out.jsonl", "--no-progress", store=cli_store)
    assert r.returncode == 0 and b"must be text or a whole number, got list" in r.stderr
    assert [json.loads(x)["id"] for x in (tmp_path / "ids-out.jsonl").read_text().splitlines()] == ["7"]
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    r = run("map-postings", fake, tmp_path / "o.jsonl", "--no-progress", store=cli_store)
    assert r.returncode == 1 and b"not a Parquet file" in r.stderr and b"Traceback" not in r.stderr
    assert not (tmp_path / "o.jsonl").exists()  # a run that failed before writing leaves no empty output
    r = run("map-postings", rows, tmp_path / "nowhere" / "o.jsonl", "--no-progress", store=cli_store)
    assert r.returncode == 2 and b"does not exist" in r.stderr


def test_csv_in_parquet_out(cli_store, tmp_path):
    import pyarrow.parquet as pq

    src = tmp_path / "postings.csv"
    with open(src, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["posting_id", "body"])
        w.writeheader()
        w.writerows({"posting_id": p["id"], "body": p["text"]} for p in POSTINGS)
    out = tmp_path / "out.parquet"
    r = run("map-postings", src, out, "--id-field", "posting_id", "--text-field", "body", "--no-progress",
            store=cli_store)
    assert r.returncode == 0, r.stderr.decode()
    table = pq.read_table(out).to_pylist()
    assert [row["id"] for row in table] == ["p1", "p2", "p3", "p4"]
    assert json.loads(table[0]["skills"])[0]["sentences"]
    assert not (tmp_path / "out.parquet.partial.jsonl").exists()


def test_parquet_in(cli_store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "postings.parquet"
    pq.write_table(pa.Table.from_pylist(POSTINGS), src)
    out = tmp_path / "out.jsonl"
    assert run("map-postings", src, out, "--no-progress", store=cli_store).returncode == 0
    assert [rec["id"] for rec in read_jsonl(out)] == ["p1", "p2", "p3", "p4"]


def test_missing_columns_are_named(cli_store, tmp_path):
    src = tmp_path / "postings.csv"
    src.write_text("id,content\n1,hello\n", encoding="utf-8")
    r = run("map-postings", src, tmp_path / "out.jsonl", "--no-progress", store=cli_store)
    assert r.returncode == 1 and "lacks ['text']" in r.stderr.decode()


def test_ray_gives_the_same_output_as_one_machine(cli_store, postings_file, tmp_path):
    local, distributed = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert run("map-postings", postings_file, local, "--no-progress", store=cli_store).returncode == 0
    r = run("map-postings", postings_file, distributed, "--no-progress", "--ray", "local", "--ray-actors", "2",
            store=cli_store)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert b"wrote 4 postings" in r.stdout
    assert distributed.read_bytes() == local.read_bytes()


def test_decomposed_postings_say_which_piece_a_skill_came_from(cli_store, tmp_path):
    src = tmp_path / "one.jsonl"
    src.write_text(json.dumps({"id": "p", "text": MULTI}) + "\n", encoding="utf-8")
    out, plain = tmp_path / "decomposed.jsonl", tmp_path / "plain.jsonl"
    r = run("map-postings", src, out, "--decompose", "--no-progress", store=cli_store)
    assert r.returncode == 0, r.stderr.decode()
    support = [s for skill in read_jsonl(out)[0]["skills"] for s in skill["sentences"]]
    assert {s["text"] for s in support} == {MULTI}
    assert {s["piece"] for s in support if "piece" in s} & set(pieces(MULTI))
    assert {s["piece"] for s in support if "piece" in s} <= set(pieces(MULTI))
    assert run("map-postings", src, plain, "--no-decompose", "--no-progress", store=cli_store).returncode == 0
    assert not any("piece" in s for skill in read_jsonl(plain)[0]["skills"] for s in skill["sentences"])
    # The setting is part of the run: an output is not resumed with another one.
    r = run("map-postings", src, out, "--no-decompose", "--no-progress", store=cli_store)
    assert r.returncode == 2 and b"written by another run" in r.stderr
