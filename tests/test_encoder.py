"""The encoder runtimes: ONNX export checked against sentence-transformers, and the choice of runtime."""

import os
import shutil
import stat
import tempfile
import time

import numpy as np
import pytest

from knnbe_qdrant import Encoder, InvalidInputError
from knnbe_qdrant.encoding import encoder as encoder_module
from knnbe_qdrant.encoding import models, onnx
from knnbe_qdrant.encoding import openvino as openvino_module
from tests.helpers import run


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


def test_pass_widths_move_to_an_aligned_length_only_when_it_is_near():
    assert [onnx.padded_width(n, 16, 256) for n in (16, 17, 23, 24, 31, 32, 40, 47)] == [16, 17, 23, 32, 32, 32, 48, 48]
    assert onnx.padded_width(250, 16, 252) == 250  # never past what the model reads
    assert [onnx.padded_width(n, 1, 256) for n in (1, 17, 255)] == [1, 17, 255]  # align 1: the longest text's


def test_aligned_passes_give_the_same_embeddings_and_token_states():
    """Whatever this CPU chose, a pass padded to an aligned length (what OpenVINO does on AMX CPUs) encodes the
    texts as an unpadded one does: the padding is masked."""
    texts = ["Experience with Python and SQL databases.", "cook", "You will lead a team of nurses on a busy ward, "
             "plan their shifts and train new staff in patient safety."]
    encoder = Encoder(precision="fp32")
    runtime = encoder._runtime
    assert runtime.align == 1  # ONNX Runtime in fp32: no steps were measured, no padding
    plain = encoder.encode_tokens(texts)
    runtime.align = 16
    try:
        aligned = encoder.encode_tokens(texts)
    finally:
        runtime.align = 1
    assert np.min(np.sum(plain.vectors * aligned.vectors, axis=1)) >= 0.99999
    assert [len(s) for s in plain.states] == [len(s) for s in aligned.states] and plain.spans == aligned.spans
    assert max(float(np.abs(a - b).max()) for a, b in zip(plain.states, aligned.states)) < 1e-3


def test_texts_are_cut_before_tokenizing_without_changing_the_embedding(encoder):
    long = "Experience with Python and SQL databases. " * 2000  # 86,000 characters; the model reads 256 tokens
    assert len(long) > encoder_module.MAX_CHARS
    a, b = encoder.encode([long, long[: encoder_module.MAX_CHARS]])
    assert float(a @ b) > 0.99999


def test_an_encoder_call_uses_the_threads_it_is_given_and_the_service_gives_each_worker_its_share():
    from knnbe_qdrant.service.batching import worker_shape

    one = Encoder(runtime="onnx", threads=1)
    assert one._runtime.session.get_session_options().intra_op_num_threads == 1
    assert Encoder(runtime="onnx")._runtime.session.get_session_options().intra_op_num_threads == 0  # every core
    texts = ["Experience with Python and SQL databases.", "cook"]
    assert np.allclose(one.encode(texts), Encoder(runtime="onnx").encode(texts), atol=1e-6)
    with pytest.raises(InvalidInputError, match="threads must be >= 1"):
        Encoder(threads=0)
    vino = Encoder(runtime="openvino", threads=1)  # the dev extra installs OpenVINO
    assert vino._runtime.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert np.allclose(vino.encode(texts), Encoder(runtime="openvino").encode(texts), atol=1e-6)
    # (map workers, encoder threads per call): the workers' calls together use each core once.
    assert [worker_shape(cpus=c) for c in (1, 2, 3, 16)] == [(1, 1), (2, 1), (2, 1), (2, 8)]
    assert worker_shape(3, cpus=2) == (3, 1) and worker_shape(1, cpus=16) == (1, 16)
    with pytest.raises(InvalidInputError, match="map workers must be >= 1, got 0"):
        worker_shape(0)


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


TEXTS = ["Experience with Python and SQL databases.", "cook", "Provide nursing care to patients in a ward.",
         "Fluency in English is required; German is an advantage.", "You will lead a small, friendly team."]


@pytest.fixture
def int8_in(tmp_path, monkeypatch):
    """The int8 model quantized into `tmp_path` (not the user's cache) on few calibration sentences, for speed."""
    from knnbe_qdrant.encoding import int8

    if not int8.available():
        pytest.skip("the int8 extra (nncf) is not installed")
    monkeypatch.setattr(int8, "CALIBRATION_SENTENCES", 16)
    monkeypatch.setattr(int8, "int8_dir_for", lambda onnx_path: tmp_path / "int8")
    return tmp_path / "int8"


def test_int8_queries_are_opt_in_close_to_fp32_and_quantized_once(int8_in, monkeypatch):
    from knnbe_qdrant.encoding import int8

    reference = Encoder(precision="fp32").encode(TEXTS)
    assert Encoder().precision != "int8"  # opt-in
    monkeypatch.setenv("KNNBE_PRECISION", "int8")
    quick = Encoder()
    assert (quick.runtime, quick.precision) == ("openvino", "int8")
    assert int8.is_whole(int8_in)
    assert np.min(np.sum(quick.encode(TEXTS) * reference, axis=1)) >= 0.99
    tokens = quick.encode_tokens(TEXTS)
    assert [len(s) for s in tokens.states] == [len(s) for s in Encoder(precision="fp32").encode_tokens(TEXTS).states]
    # Cached: a second encoder loads the file and quantizes nothing.
    monkeypatch.setattr(int8, "quantize", lambda *a, **k: pytest.fail("quantized again"))
    assert Encoder().precision == "int8"
    # Stored vectors are encoded in fp32 whatever the environment says.
    assert (Encoder(precision="fp32").runtime, Encoder(precision="fp32").precision) == ("onnx", "fp32")


@pytest.mark.slow  # a whole int8 quantization (~60 s on two cores); int8 is opt-in
def test_a_damaged_int8_cache_is_quantized_again_not_loaded(int8_in):
    import shutil

    from knnbe_qdrant.encoding import int8

    reference = Encoder(precision="fp32").encode(TEXTS)
    Encoder(precision="int8")
    weights = int8_in / int8.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)  # a run of weights zeroed: it would still load
    weights.write_bytes(bytes(data))
    assert not int8.is_whole(int8_in)
    again = Encoder(precision="int8")
    assert int8.is_whole(int8_in)
    assert np.min(np.sum(again.encode(TEXTS) * reference, axis=1)) >= 0.99
    (int8_in / int8.CHECKSUMS_FILE).unlink()  # a cache cut short before its checksums: not whole either
    assert not int8.is_whole(int8_in)
    assert Encoder(precision="int8").precision == "int8" and int8.is_whole(int8_in)
    shutil.rmtree(int8_in)
    int8_in.write_text("not a folder")  # a file where the folder was
    assert Encoder(precision="int8").precision == "int8" and int8.is_whole(int8_in)
    assert sorted(p.name for p in int8_in.parent.iterdir()) == ["int8"]  # nothing set aside is left behind


def test_precision_errors_name_the_setting(monkeypatch):
    monkeypatch.setenv("KNNBE_PRECISION", "fp16")
    with pytest.raises(InvalidInputError, match="KNNBE_PRECISION"):
        Encoder()
    assert Encoder(precision="fp32").precision == "fp32"  # the store's own writes are not stopped by it
    monkeypatch.delenv("KNNBE_PRECISION")
    for runtime in ("onnx", "torch"):
        with pytest.raises(InvalidInputError, match=f"int8 runs on OpenVINO, not on the {runtime}"):
            Encoder(runtime=runtime, precision="int8")
    from knnbe_qdrant import ModelError
    from knnbe_qdrant.encoding import int8

    monkeypatch.setattr(int8, "available", lambda: False)  # installed without the int8 extra
    with pytest.raises(ModelError, match=r"knnbe-qdrant\[int8\]"):
        Encoder(precision="int8")


def test_an_int8_cache_that_cannot_be_written_is_one_clear_error(int8_in, monkeypatch):
    from knnbe_qdrant import ModelError

    # A read-only cache folder (simulated: tests run as root, whom the mode does not stop).
    monkeypatch.setattr("tempfile.mkdtemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "read-only")))
    with pytest.raises(ModelError, match="cannot write the int8 model"):
        Encoder(precision="int8")


@pytest.mark.slow  # two int8 quantizations racing (~30 s); int8 is opt-in
def test_an_int8_quantization_that_loses_a_race_keeps_the_winners_model(int8_in, monkeypatch, tmp_path):
    """Two processes quantizing at once: the second to finish must not remove the first's model (it may be loading
    it); and a killed quantization's staging folder, an hour old, is cleared by the next one."""
    import os
    import time

    from knnbe_qdrant.encoding import int8, onnx

    path = onnx.onnx_path_for(models.local_model_dir(Encoder(precision="fp32").name))
    stale = int8_in.parent / ".int8-killed"
    stale.mkdir(exist_ok=True)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    Encoder(precision="int8")
    assert not stale.exists()
    winner = (int8_in / int8.WEIGHTS_FILE).stat().st_ino
    real, asked = int8.is_whole, []

    def late_winner(folder):  # not whole when this quantization starts; whole (the other's) when it ends
        if folder == int8_in and not asked:
            asked.append(folder)
            return False
        return real(folder)

    monkeypatch.setattr(int8, "is_whole", late_winner)
    reference = Encoder(precision="fp32")
    int8.quantize(reference._model.inputs, reference._model.tokenizer, path, int8.calibration_texts(8))
    assert (int8_in / int8.WEIGHTS_FILE).stat().st_ino == winner
    assert not list(int8_in.parent.glob(".int8-*"))


def test_a_model_on_no_machine_fails_in_seconds_when_the_hub_cannot_be_reached(monkeypatch):
    """Offline, the hub's client retried every file of a mistyped model for about 20 s: `build --model` with a typo
    took 80 s to say so. The hub is probed once first (here: a host name that cannot resolve, as offline)."""
    from knnbe_qdrant import ModelError

    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # a name no resolver knows
    started = time.monotonic()
    with pytest.raises(ModelError, match="not on this machine and the Hugging Face hub cannot be reached"):
        Encoder("no-such-org/no-such-model-xyz")
    assert time.monotonic() - started < 20


def test_the_hub_probe_reads_hf_hub_offline_as_the_hub_client_does(monkeypatch):
    # HF_HUB_OFFLINE=0 means online to the hub's client; the probe took any value for "offline" and then let a model
    # on no machine load from the cache only.
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # behind a proxy: the hub's client knows, not a probe
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert models.hub_reachable() is True


def test_a_cache_folder_that_cannot_be_written_falls_back_to_a_private_temporary_one(tmp_path, monkeypatch, cli_store):
    """A container whose home is read-only or unknown (an arbitrary uid, HOME=/): every command that loaded a model
    failed with a traceback from mkdir."""
    from knnbe_qdrant.encoding.cache import user_cache

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # nothing can be made under it, whoever runs this (root included)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folder = user_cache("models")
    assert folder == tmp_path / "tmp" / f"knnbe-qdrant-{os.getuid()}" / "models" and folder.is_dir()
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    # A folder of that name that others may write (planted) is not used: a new private one is.
    shutil.rmtree(folder.parent)
    folder.parent.mkdir(mode=0o777)
    os.chmod(folder.parent, 0o777)
    other = user_cache("onnx")
    assert other.parent != folder.parent and other.parent.parent == tmp_path / "tmp" and other.is_dir()
    # The command line, as a user runs it: the map is printed, and the fallback said in one line.
    r = run("map", "Writing Python scripts", store=cli_store,
            env={"XDG_CACHE_HOME": str(blocked / "cache"), "TMPDIR": str(tmp_path / "tmp")})
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr.decode()
    assert b"the cache folder cannot be used" in r.stderr and b"Python" in r.stdout
