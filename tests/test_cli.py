"""The `knnbe-qdrant` command as a user runs it: real processes, a real (small) embedded store."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import SMALL_BUILD, add_unindexed, run


def test_map_arguments_prints_a_table(cli_store):
    r = run("map", "--top", "3", "Experience writing SQL queries", store=cli_store)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "Experience writing SQL queries" in out
    assert "SQL" in out
    assert len([line for line in out.splitlines() if line.strip()[:2].strip().isdigit()]) == 3


def test_map_json_has_the_documented_shape(cli_store):
    r = run("--version", store=cli_store)
    assert r.returncode == 0
    r = run("map", "--json", "--top", "4", "Fluent English is required", "Programming in Python", store=cli_store)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, ["Fluent English is required", "Programming in Python"]):
        obj = json.loads(line)
        assert obj["text"] == text
        assert len(obj["skills"]) == 4
        for s in obj["skills"]:
            # "tokens": the words matched on, where token-level matching scored (not for a sentence the memory knows)
            assert set(s) - {"tokens"} == {"id", "label", "score", "bi_encoder", "knn", "evidence"}
            assert all(w in text for w in s.get("tokens", []))
            assert s["id"].startswith("http://data.europa.eu/esco/skill/")
            assert all(set(e) == {"text", "similarity"} for e in s["evidence"])
        scores = [s["score"] for s in obj["skills"]]
        assert scores == sorted(scores, reverse=True)


def test_map_reads_a_file_and_stdin_skipping_blank_lines(cli_store, tmp_path):
    f = tmp_path / "sentences.txt"
    f.write_text("Programming in Python\n\n   \nFluent English is required\n", encoding="utf-8")
    from_file = run("map", "--json", "--file", f, store=cli_store)
    from_stdin = run("map", "--json", stdin=f.read_bytes(), store=cli_store)
    assert from_file.returncode == 0 and from_stdin.returncode == 0, from_file.stderr.decode()
    assert len(from_file.stdout.splitlines()) == 2
    assert from_file.stdout == from_stdin.stdout


def test_store_flag_overrides_environment(cli_store, tmp_path):
    r = run("map", "--store", cli_store, "--json", "Programming in Python", store=tmp_path / "elsewhere")
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["map", "   "], b"", "argument 1 is an empty sentence"),
        (["map"], b"\n  \n", "no sentences in standard input"),
        (["map", "--top", "0", "x"], b"", "--top must be >= 1"),
        (["tune", "tech-validation", "--token-weights", "0,x"], b"", "--token-weights: not a comma-separated list"),
        (["tune", "tech-validation", "--token-weights", "0,1.5"], b"", "each weight must be in [0, 1], got [1.5]"),
    ],
)
def test_bad_sentences_exit_2_with_a_clear_message(cli_store, args, stdin, message):
    r = run(*args, stdin=stdin, store=cli_store)
    assert r.returncode == 2
    assert message in r.stderr.decode()


def test_non_utf8_file_names_the_line(cli_store, tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("first line\nsecond line caf\xe9\n".encode("latin-1"))
    r = run("map", "--file", f, store=cli_store)
    assert r.returncode == 1
    assert f"{f}:2: not UTF-8" in r.stderr.decode()
    r = run("map", "--file", tmp_path / "missing.txt", store=cli_store)
    assert r.returncode == 1 and "cannot read" in r.stderr.decode()


def test_paths_that_are_not_stores_are_refused(tmp_path):
    r = run("map", "x", store=tmp_path / "nothing-here")
    assert r.returncode == 1 and "no store at" in r.stderr.decode() and "knnbe-qdrant build" in r.stderr.decode()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    r = run("map", "x", store=tmp_path / "foreign")
    assert r.returncode == 1 and "not a knnbe-qdrant store" in r.stderr.decode()
    r = run("build", "--force", "--no-progress", store=tmp_path / "foreign")
    assert r.returncode == 1 and "refusing" in r.stderr.decode()
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_half_built_store_is_reported_then_finished_by_build(tmp_path, cli_taxonomy):
    path = tmp_path / "half"
    r = run("build", "--taxonomy", cli_taxonomy, *SMALL_BUILD, store=path)
    assert r.returncode == 0
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["state"] = "building"  # what a build killed before its end leaves behind
    (path / "manifest.json").write_text(json.dumps(manifest))
    r = run("map", "x", store=path)
    assert r.returncode == 1 and "half-built" in r.stderr.decode()
    r = run("build", "--taxonomy", cli_taxonomy, *SMALL_BUILD, store=path)
    assert r.returncode == 0, r.stderr.decode()
    assert run("map", "Programming in Python", store=path).returncode == 0


def test_damaged_manifest_is_reported(tmp_path, cli_store):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cli_store, copy)
    (copy / "manifest.json").write_text("{not json")
    r = run("map", "x", store=copy)
    assert r.returncode == 1 and "damaged" in r.stderr.decode()


def test_bad_taxonomy_names_the_line_and_leaves_the_store_alone(cli_store, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x1", "label": "ok"}\n{"id": "x2"}\n', encoding="utf-8")
    before = (cli_store / "manifest.json").read_text()
    r = run("build", "--taxonomy", bad, "--force", "--no-progress", store=cli_store)
    assert r.returncode == 1
    assert f"{bad}:2: field 'label' is missing" in r.stderr.decode()
    assert (cli_store / "manifest.json").read_text() == before
    assert run("map", "Programming in Python", store=cli_store).returncode == 0


def test_another_model_is_refused_before_loading_it(cli_store):
    from knnbe_qdrant import ModelMismatchError, SkillMapper

    with pytest.raises(ModelMismatchError, match="all-mpnet-base-v2"):
        SkillMapper.open(cli_store, model="sentence-transformers/all-mpnet-base-v2")


def test_second_process_gets_a_clear_lock_error(cli_store):
    from knnbe_qdrant import EdgeStore

    held = EdgeStore(cli_store)
    try:
        r = run("map", "x", store=cli_store)
        assert r.returncode == 1
        assert "open in another process" in r.stderr.decode()
    finally:
        held.close()


def test_eval_reads_jsonl_and_span_csv_alike_and_counts_unknown_gold(cli_store, tmp_path, small_skills):
    python = next(s for s in small_skills if s.label == "Python (computer programming)")
    english = next(s for s in small_skills if s.label == "English")
    jsonl = tmp_path / "bench.jsonl"
    jsonl.write_text(
        json.dumps({"sentence": "Programming in Python", "labels": [python.label], "uris": [python.id]}) + "\n"
        + json.dumps({"sentence": "Fluent English is required", "labels": ["English", "Klingon"],
                      "uris": [english.id, None]}) + "\n",
        encoding="utf-8",
    )
    csv_file = tmp_path / "bench.csv"
    csv_file.write_text(
        "sentence,span,sub_span,label\n"
        "Programming in Python,Python,,Python (computer programming)\n"
        "Programming in Python,Programming,,UNDERSPECIFIED\n"
        "Fluent English is required,English,,English\n"
        "Fluent English is required,Fluent,,Klingon\n"
        "Nothing to see here,here,,LABEL NOT PRESENT\n",
        encoding="utf-8",
    )
    outputs = []
    for f in (jsonl, csv_file):
        r = run("eval", "--json", f, store=cli_store)
        assert r.returncode == 0, r.stderr.decode()
        outputs.append(json.loads(r.stdout))
    assert outputs[0] == outputs[1]
    report = outputs[0]
    assert report["n"] == 2 and report["unknown_gold"] == 1
    # Python is found first (RP@5 = 1); English is found but Klingon never can be (RP@5 <= 1/2).
    assert 0.5 < report["rp@5"] <= 0.75
    assert all(0.0 <= report[k] <= 1.0 for k in ("rp@5", "rp@10", "mrr"))


def test_eval_evaluates_as_the_store_maps_and_compares_both_ways(cli_store):
    def scores(*flags):
        r = run("eval", "--json", "--exact", "tech-validation", *flags, store=cli_store)
        assert r.returncode == 0, r.stderr.decode()
        return {m: v for m, v in json.loads(r.stdout).items() if m in ("rp@5", "rp@10", "mrr")}

    default, on, off = scores(), scores("--decompose"), scores("--no-decompose")
    assert default == off != on  # the shipped model maps one embedding per sentence; decomposition is opt-in
    r = run("eval", "--json", "--exact", "tech-validation", "--compare-decompose", store=cli_store)
    assert r.returncode == 0, r.stderr.decode()
    compared = json.loads(r.stdout)
    assert compared["plain"] == pytest.approx(off, abs=1e-4) and compared["decomposed"] == pytest.approx(on, abs=1e-4)
    for metric, (gain, lo, hi) in compared["gain"].items():
        assert gain == pytest.approx(on[metric] - off[metric], abs=1e-4) and lo <= gain <= hi


def test_eval_names_the_bad_line(cli_store, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence": "ok", "labels": ["English"]}\n{"sentence": "no labels"}\n', encoding="utf-8")
    r = run("eval", bad, store=cli_store)
    assert r.returncode == 1
    assert f"{bad}:2: field 'labels'" in r.stderr.decode()


def test_curation_commands_end_to_end(cli_store, tmp_path):
    r = run("skill", "add", "--id", "custom:widgets", "--label", "widget assembly", "--tenant", "acme",
            "--user", "carol", store=cli_store)
    assert r.returncode == 0, r.stderr.decode()
    r = run("memory", "add", "--skill", "widget assembly", "--text", "Assemble widgets on the line", "--tenant", "acme",
            store=cli_store, env={"KNNBE_USER": "dave"})
    assert r.returncode == 0 and b"added" in r.stdout, r.stderr.decode()
    r = run("memory", "list", "--skill", "custom:widgets", "--tenant", "acme", "--json", store=cli_store)
    [row] = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert row["text"] == "Assemble widgets on the line" and row["created_by"] == "dave" and row["tenant"] == "acme"
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"text": "Widget quality checks", "skill": "custom:widgets"}\n{"text": "", "skill": "x"}\n',
                   encoding="utf-8")
    r = run("memory", "import", bad, "--tenant", "acme", "--no-progress", store=cli_store)
    assert r.returncode == 1
    assert f"{bad}:2: empty 'text'" in r.stderr.decode()
    assert b"stored 1, already stored 0, bad rows 1" in r.stdout
    r = run("map", "--json", "--tenant", "acme", "--top", "3", "We assemble widgets", store=cli_store)
    assert "custom:widgets" in [s["id"] for s in json.loads(r.stdout)["skills"]]
    r = run("map", "--json", "--top", "20", "We assemble widgets", store=cli_store)
    assert "custom:widgets" not in [s["id"] for s in json.loads(r.stdout)["skills"]]
    r = run("tenant", "list", "--json", store=cli_store)
    assert json.loads(r.stdout)["acme"] == {"skills": 1, "memory": 2, "hidden": 0}
    r = run("tenant", "delete", "acme", store=cli_store)
    assert r.returncode == 0
    assert json.loads(run("tenant", "list", "--json", store=cli_store).stdout) == {}
    r = run("memory", "add", "--skill", "no such skill", "--text", "x", store=cli_store)
    assert r.returncode == 1 and b"no skill 'no such skill'" in r.stderr


def test_build_without_model_keeps_the_model_a_store_was_built_with(tmp_path, cli_taxonomy):
    # A store built with another model than today's default (an older release's, say) is finished or topped up
    # with its own model; only --model or --force choose another.
    path = tmp_path / "older"
    r = run("build", "--taxonomy", cli_taxonomy, *SMALL_BUILD, "--model", "sentence-transformers/all-MiniLM-L6-v2",
            store=path)
    assert r.returncode == 0, r.stderr.decode()
    r = run("build", "--taxonomy", cli_taxonomy, *SMALL_BUILD, store=path)
    assert r.returncode == 0, r.stderr.decode()
    assert b"model sentence-transformers/all-MiniLM-L6-v2 " in r.stdout
    r = run("build", "--taxonomy", cli_taxonomy, *SMALL_BUILD, "--model", "knnbe-qdrant/all-MiniLM-L6-v2-esco",
            store=path)
    assert r.returncode == 1 and "refusing" in r.stderr.decode()


def test_an_import_indexes_what_curators_added_once_past_the_indexing_threshold(cli_store, tmp_path):
    # The embedded engine indexes only when told: until then every query searches these points one by one.
    path = tmp_path / "store"
    shutil.copytree(cli_store, path)
    r = run("status", "--json", store=path)
    small = json.loads(r.stdout)["unindexed"]  # a small store's collections stay under the threshold: unindexed
    assert add_unindexed(path) == small + 7000
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "We assemble widgets daily", "skill": "English"}) + "\n", encoding="utf-8")
    r = run("memory", "import", rows, "--tenant", "acme", "--no-progress", store=path)
    assert r.returncode == 0, r.stderr.decode()
    assert b"stored 1," in r.stdout and b"points added since the store was last indexed" in r.stderr
    left = json.loads(run("status", "--json", store=path).stdout)["unindexed"]
    assert left < small, left  # the memory collection is indexed whole now; the small skills collection is not
    r = run("memory", "import", rows, "--tenant", "acme", "--no-progress", store=path)
    assert b"already stored 1" in r.stdout and b"indexed" not in r.stderr  # nothing to index: nothing said
