"""The encoder runtimes: ONNX export checked against sentence-transformers, and the choice of runtime."""

import numpy as np
import pytest

from knnbe_qdrant import Encoder, InvalidInputError
from knnbe_qdrant.encoding import encoder as encoder_module
from knnbe_qdrant.encoding import models, onnx
from knnbe_qdrant.encoding import openvino as openvino_module


def test_onnx_and_torch_embeddings_agree(encoder):
    texts = ["Experience with Python and SQL databases.", "cook", "Provide nursing care to patients in a ward."]
    torch_vectors = Encoder(runtime="torch").encode(texts)
    onnx_vectors = Encoder(runtime="onnx").encode(texts, batch_size=2)  # padding across lengths exercised
    assert np.min(np.sum(torch_vectors * onnx_vectors, axis=1)) >= 0.999
    assert np.allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)


def test_onnx_file_is_cached_next_to_the_model(encoder):
    assert encoder.runtime in ("onnx", "openvino")  # both run the exported file
    path = onnx.onnx_path_for(models.local_model_dir(encoder.name))
    assert path.exists() and path.name == onnx.ONNX_FILE


def test_a_gpu_without_onnx_cuda_falls_back_to_sentence_transformers(monkeypatch):
    # No GPU is lent to this project's CI: the detection is simulated, the model and runtime are real.
    monkeypatch.setattr(encoder_module, "_cuda_present", lambda: True)
    monkeypatch.setattr(encoder_module, "_onnx_has_cuda", lambda: False)
    assert Encoder().runtime == "torch"
    monkeypatch.setattr(encoder_module, "_onnx_has_cuda", lambda: True)
    assert Encoder(device="cpu").runtime == "onnx"


def test_bf16_where_the_cpu_has_bf16_units_else_fp32_onnx(monkeypatch):
    texts = ["Experience with Python and SQL databases.", "cook", "Provide nursing care to patients in a ward."]
    full = Encoder(precision="fp32")
    assert (full.runtime, full.precision) == ("onnx", "fp32")
    reference = full.encode(texts)
    auto = Encoder()
    if openvino_module.cpu_has_bf16_units() and openvino_module.available():
        assert (auto.runtime, auto.precision) == ("openvino", "bf16")
    else:
        assert (auto.runtime, auto.precision) == ("onnx", "fp32")
    # Interchangeable with the stored fp32 vectors (measured on 512 sentences: cosine >= 0.99997).
    assert np.min(np.sum(auto.encode(texts) * reference, axis=1)) >= 0.9999
    monkeypatch.setattr(encoder_module, "cpu_has_bf16_units", lambda: False)  # a CPU without them: as before
    assert (Encoder().runtime, Encoder().precision) == ("onnx", "fp32")
    monkeypatch.setenv("KNNBE_RUNTIME", "torch")
    assert Encoder().runtime == "torch"


def test_texts_are_cut_before_tokenizing_without_changing_the_embedding(encoder):
    long = "Experience with Python and SQL databases. " * 2000  # 86,000 characters; the model reads 256 tokens
    assert len(long) > encoder_module.MAX_CHARS
    a, b = encoder.encode([long, long[: encoder_module.MAX_CHARS]])
    assert float(a @ b) > 0.99999


def test_empty_text_is_refused(encoder):
    import pytest

    with pytest.raises(InvalidInputError, match="#1"):
        encoder.encode(["fine", " "])


@pytest.mark.parametrize(("config", "mode"), [({"pooling_mode": "mean"}, "mean"), ({"pooling_mode": "cls"}, "cls"),
                                          ({"pooling_mode_mean_tokens": True}, "mean")])
def test_pooling_configs_of_every_sentence_transformers_version_export_to_onnx(tmp_path, config, mode):
    """sentence-transformers 6 saves {"pooling_mode": "mean"}: a model it fine-tuned must still run on ONNX (it
    fell back to torch, 4x slower here, before this was read)."""
    import json

    from knnbe_qdrant.encoding.onnx import pipeline

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 384, **config}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}]))
    assert pipeline(tmp_path)[0] == mode
