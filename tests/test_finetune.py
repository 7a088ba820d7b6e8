"""Fine-tuning writes an ordinary model directory the Encoder loads; a patch over the base model reproduces it."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from knnbe_qdrant import Encoder
from knnbe_qdrant._errors import InvalidInputError, ModelError
from knnbe_qdrant.encoding import BASE_MODEL, local_model_dir
from knnbe_qdrant.encoding.finetune import RECIPE_FILE, Recipe, finetune, mine_hard_negatives, training_pairs
from knnbe_qdrant.encoding.patch import make_patch, materialize

pytest.importorskip("datasets")
pytest.importorskip("accelerate")

PROBES = ["Experience with Python and SQL databases.", "You will care for patients on the ward.", "cook"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "model"
    # Two steps at a high rate: enough to move every trainable weight, cheap enough for the default suite.
    return finetune(out, Recipe(pairs=64, batch_size=32, learning_rate=1e-3, seed=1), progress=False)


def test_output_is_a_model_directory_with_its_recipe(tuned):
    recipe = json.loads((tuned / RECIPE_FILE).read_text())
    assert recipe["pairs_used"] == 64 and recipe["base"] == BASE_MODEL and recipe["train_loss"] > 0
    base = Encoder(BASE_MODEL)
    model = Encoder(str(tuned))  # loads (and exports to ONNX) like any sentence-transformers directory
    assert model.dimension == base.dimension
    a, b = model.encode(PROBES), base.encode(PROBES)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(a * b, axis=1)) < 0.9999  # training moved the embeddings


def test_only_the_word_embeddings_stay_frozen(tuned):
    base = load_file(str(local_model_dir(BASE_MODEL) / "model.safetensors"))
    new = load_file(str(tuned / "model.safetensors"))
    words = [k for k in new if k.endswith("word_embeddings.weight")]
    assert words and all(np.array_equal(new[k], base[k]) for k in words)
    changed = [k for k in new if not np.array_equal(new[k], base[k])]
    assert any("encoder.layer.5" in k for k in changed)


def test_patch_reproduces_the_tuned_model(tuned, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base_dir = local_model_dir(BASE_MODEL)
    patch = make_patch(tuned, base_dir, tmp_path / "patch", name="test/tuned", recipe={"base": BASE_MODEL})
    assert (patch / "delta.safetensors").stat().st_size < (tuned / "model.safetensors").stat().st_size / 2
    made = materialize(patch, base_dir)
    assert materialize(patch, base_dir) == made  # made once, then reused
    want, got = Encoder(str(tuned)).encode(PROBES), Encoder(str(made)).encode(PROBES)
    assert np.min(np.sum(want * got, axis=1)) > 0.9999


def test_patch_refuses_other_base_weights(tuned, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    patch = make_patch(tuned, local_model_dir(BASE_MODEL), tmp_path / "patch", name="test/tuned")
    with pytest.raises(Exception, match="checksum"):
        materialize(patch, tuned)  # the tuned weights are not the base the patch was made from


def test_a_damaged_patch_is_refused(tuned, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    patch = make_patch(tuned, local_model_dir(BASE_MODEL), tmp_path / "patch", name="test/tuned")
    with open(patch / "delta.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with pytest.raises(Exception, match="damaged"):
        materialize(patch, local_model_dir(BASE_MODEL))


def test_training_pairs_are_seeded_and_refuse_an_empty_set(small_skills, small_memory):
    a = training_pairs(small_skills, small_memory, 50, seed=3)
    assert a == training_pairs(small_skills, small_memory, 50, seed=3) and len(a) == 50
    labels = {s.label for s in small_skills}
    assert all(p in labels and s != p for s, p in a)
    with pytest.raises(InvalidInputError, match="no training pairs"):
        training_pairs(small_skills, [], 10, seed=0)


def test_output_directory_must_be_new(tuned):
    with pytest.raises(InvalidInputError, match="not empty"):
        finetune(tuned, Recipe(pairs=64, batch_size=32))


def test_mined_negatives_are_close_but_never_a_label_of_the_sentence(small_skills, small_memory):
    pairs = training_pairs(small_skills, small_memory, 80, seed=2)
    negatives = mine_hard_negatives(pairs, small_skills, small_memory, BASE_MODEL, seed=2)
    assert negatives == mine_hard_negatives(pairs, small_skills, small_memory, BASE_MODEL, seed=2)
    label_of = {s.id: s.label for s in small_skills}
    positives: dict[str, set[str]] = {}
    for m in small_memory:
        positives.setdefault(m.text, set()).add(label_of[m.skill_id])
    assert len(negatives) == len(pairs)
    assert all(n not in positives[text] | {p} for (text, p), n in zip(pairs, negatives))
    # Mined, not random: the negative is more similar to the sentence than a random label is, on average.
    encoder = Encoder(BASE_MODEL)
    texts = encoder.encode([t for t, _ in pairs])
    mined = np.sum(texts * encoder.encode(negatives), axis=1)
    shuffled = np.sum(texts * encoder.encode(sorted(label_of.values())[: len(pairs)]), axis=1)
    assert mined.mean() > shuffled.mean() + 0.1


@pytest.mark.slow  # mines negatives over the whole memory (~60 s); the default run trains without them
def test_hard_negatives_train_on_triplets(tmp_path):
    out = finetune(tmp_path / "hn", Recipe(pairs=64, batch_size=32, seed=1, hard_negatives=True), progress=False)
    assert json.loads((out / RECIPE_FILE).read_text())["hard_negatives"] is True
    assert Encoder(str(out)).encode(PROBES).shape == (3, 384)



def test_the_default_recipe_is_the_shipped_encoders_whatever_the_default_memory(monkeypatch, tmp_path):
    """The default memory gained a source the shipped encoder was not trained on (esco_transversal): `finetune`
    without --memory-sources must still draw its pairs from the shipped encoder's own sources."""
    from knnbe_qdrant._data import DEFAULT_MEMORY_SOURCES, data_file
    from knnbe_qdrant.cli import build_parser
    from knnbe_qdrant.encoding import finetune as module

    patch = json.loads(data_file("models/all-MiniLM-L6-v2-esco/patch.json").read_text())
    assert list(Recipe().memory_sources) == patch["recipe"]["memory_sources"]
    assert set(Recipe().memory_sources) < set(DEFAULT_MEMORY_SOURCES)
    seen = []
    monkeypatch.setattr(module, "finetune", lambda out, recipe, progress: seen.append(recipe) or out)
    args = build_parser().parse_args(["finetune", str(tmp_path / "m"), "--no-progress"])
    assert args.func(args) == 0
    assert seen[0].memory_sources == Recipe().memory_sources


def test_a_base_model_on_no_machine_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch, tmp_path):
    # Offline, the hub's client retried each file of a mistyped base for ~20 s (80 s in all for a model name).
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    started = time.monotonic()
    with pytest.raises(ModelError, match="base model 'no-such-org/no-such-base' is not on this machine"):
        finetune(tmp_path / "m", Recipe(base="no-such-org/no-such-base", pairs=8), progress=False)
    assert time.monotonic() - started < 10 and not (tmp_path / "m").exists()
