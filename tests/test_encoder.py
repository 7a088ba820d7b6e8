"""The encoder runtimes: ONNX export checked against sentence-transformers, and the choice of runtime."""

import numpy as np

from knnbe_qdrant import Encoder, InvalidInputError
from knnbe_qdrant.encoding import encoder as encoder_module
from knnbe_qdrant.encoding import models, onnx


def test_onnx_and_torch_embeddings_agree(encoder):
    texts = ["Experience with Python and SQL databases.", "cook", "Provide nursing care to patients in a ward."]
    torch_vectors = Encoder(runtime="torch").encode(texts)
    onnx_vectors = Encoder(runtime="onnx").encode(texts, batch_size=2)  # padding across lengths exercised
    assert np.min(np.sum(torch_vectors * onnx_vectors, axis=1)) >= 0.999
    assert np.allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)


def test_onnx_file_is_cached_next_to_the_model(encoder):
    assert encoder.runtime == "onnx"
    path = onnx.onnx_path_for(models.local_model_dir(encoder.name))
    assert path.exists() and path.name == onnx.ONNX_FILE


def test_a_gpu_without_onnx_cuda_falls_back_to_sentence_transformers(monkeypatch):
    # No GPU is lent to this project's CI: the detection is simulated, the model and runtime are real.
    monkeypatch.setattr(encoder_module, "_cuda_present", lambda: True)
    monkeypatch.setattr(encoder_module, "_onnx_has_cuda", lambda: False)
    assert Encoder().runtime == "torch"
    monkeypatch.setattr(encoder_module, "_onnx_has_cuda", lambda: True)
    assert Encoder(device="cpu").runtime == "onnx"


def test_empty_text_is_refused(encoder):
    import pytest

    with pytest.raises(InvalidInputError, match="#1"):
        encoder.encode(["fine", " "])
