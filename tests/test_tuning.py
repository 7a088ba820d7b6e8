"""Tuning: the replayed grid scores exactly what a direct run scores, and tuned defaults are where the mapper
reads them."""

from __future__ import annotations

import json

import pytest

from knnbe_qdrant import ScoringParams, SkillMapper
from knnbe_qdrant._data import TUNED_PARAMS, data_file, tuned_defaults
from knnbe_qdrant.evaluation import run_eval
from knnbe_qdrant.evaluation.tuning import save_params, tune

GRID = {"lam": (0.3, 0.6), "k": (8, 32), "tau": (0.05,), "aggregation": ("softmax",)}


def test_grid_points_score_as_a_direct_evaluation_does(built_stores, encoder):
    # One backend: tuning replays the queries of whichever store it is given (the backends agree:
    # test_mapper.py::test_backends_agree_on_top10_with_exact_search); on qdrant-client's local mode this test
    # alone took 80 s of the suite.
    built_store = built_stores["embedded"]
    mapper = SkillMapper(built_store, encoder, exact=True, decompose=False)
    shipped = mapper.params  # the shipped model maps with token matching, though it was not trained with it
    assert shipped.token_weight > 0 and not encoder.recipe.get("token_attention")
    rows = tune(mapper, ["tech-validation"], grid=GRID, checks=["house-validation"])
    # Its own α, T and gate are searched beside the pooled cosine: tuning must not drop token matching.
    assert sorted({r["token_weight"] for r in rows}) == [0.0, shipped.token_weight]
    assert {(r["token_temperature"], r["token_gate"]) for r in rows if r["token_weight"]} == {
        (shipped.token_temperature, shipped.token_gate)}
    assert len(rows) == 8
    assert [r["objective"] for r in rows] == sorted((r["objective"] for r in rows), reverse=True)
    for row in rows:
        params = ScoringParams(lam=row["lam"], k=row["k"], tau=row["tau"], token_weight=row["token_weight"],
                               token_temperature=row["token_temperature"], token_gate=row["token_gate"],
                               clause_depth=row["clause_depth"])
        direct = SkillMapper(built_store, encoder, params, exact=True, decompose=False)
        report = run_eval(direct, "tech-validation")["knnbe"]
        for metric in ("rp@5", "rp@10", "mrr"):
            assert row["tech-validation"][metric] == pytest.approx(report[metric])
        assert row["objective"] == pytest.approx((report["rp@5"] + report["rp@10"]) / 2)


def test_tuned_defaults_are_read_store_first_then_package(built_store, encoder):
    shipped = json.loads(data_file(TUNED_PARAMS).read_text())[encoder.name]
    assert tuned_defaults(encoder.name) == shipped
    mapper = SkillMapper(built_store, encoder)
    assert (mapper.params.lam, mapper.params.k, mapper.params.tau) == (shipped["lam"], shipped["k"], shipped["tau"])
    manifest = built_store.manifest
    try:
        save_params(mapper, {"lam": 0.45, "k": 24, "tau": 0.07, "aggregation": "softmax"}, ["tech-validation"])
        own = SkillMapper(built_store, encoder).params
        assert (own.lam, own.k, own.tau) == (0.45, 24, 0.07)
        assert SkillMapper(built_store, encoder, ScoringParams(lam=0.9)).params.lam == 0.9  # explicit wins
    finally:
        manifest.params = None
        built_store._write_manifest(manifest)
