"""Shipped fine-tuned encoders as compact patches over a base model the machine already has.

A fine-tuned MiniLM is 91 MB; the repository and the wheel carry only what fine-tuning changed (every tensor but
the frozen word embeddings), as fp16 differences from the base: about a quarter of that. On first use the patch is
applied to the base model's weights and the result saved as an ordinary sentence-transformers directory in the user
cache, checked against the checksum recorded when the patch was made. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from .._errors import ModelError
from .cache import user_cache

PATCH_FILE = "delta.safetensors"
META_FILE = "patch.json"
WEIGHTS = "model.safetensors"


def patches_dir() -> Path:
    return Path(str(resources.files("knnbe_qdrant") / "data" / "models"))


def shipped_models() -> dict[str, dict]:
    """{model name: patch metadata} for every patch shipped with the package."""
    out = {}
    root = patches_dir()
    if root.is_dir():
        for meta_file in sorted(root.glob(f"*/{META_FILE}")):
            meta = json.loads(meta_file.read_text())
            out[meta["name"]] = {**meta, "dir": str(meta_file.parent)}
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_patch(tuned_dir: str | Path, base_dir: str | Path, out_dir: str | Path, name: str,
               recipe: dict | None = None) -> Path:
    """Write `out_dir/{delta.safetensors, patch.json}`: the tensors of `tuned_dir` that differ from `base_dir`,
    as fp16 differences, and the checksums of the base weights they apply to and of the patch itself."""
    from safetensors.numpy import load_file, save_file

    tuned = load_file(str(Path(tuned_dir) / WEIGHTS))
    base = load_file(str(Path(base_dir) / WEIGHTS))
    unknown = set(tuned) - set(base)
    if unknown:
        raise ModelError(f"{tuned_dir} has tensors the base model lacks: {sorted(unknown)[:5]}")
    delta = {k: (v.astype(np.float32) - base[k].astype(np.float32)).astype(np.float16)
             for k, v in tuned.items() if not np.array_equal(v, base[k])}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(delta, str(out / PATCH_FILE))
    (out / PATCH_FILE).chmod(0o644)  # safetensors writes it private; it ships in the package
    meta = {
        "name": name,
        "base": (recipe or {}).get("base"),
        "base_weights_sha256": _sha256(Path(base_dir) / WEIGHTS),
        "patch_sha256": _sha256(out / PATCH_FILE),
        "patched_tensors": len(delta),
        "recipe": recipe or {},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _cache_root() -> Path:
    return user_cache("models")


def materialize(patch_dir: str | Path, base_dir: Path) -> Path:
    """The patched model as a model directory in the user cache: made once from `base_dir` plus the patch in
    `patch_dir`, then reused."""
    from safetensors.numpy import load_file, save_file

    meta = json.loads((Path(patch_dir) / META_FILE).read_text())
    name = meta["name"]
    patch = Path(patch_dir) / PATCH_FILE
    # The recorded checksums name the cache entry, so a start that finds it made reads no weights at all.
    key = hashlib.sha256((meta["base_weights_sha256"] + meta["patch_sha256"]).encode()).hexdigest()[:16]
    target = _cache_root() / f"{name.replace('/', '--')}-{key}"
    if (target / WEIGHTS).exists():
        return target
    if _sha256(patch) != meta["patch_sha256"]:
        raise ModelError(f"{patch} is damaged: its checksum is not the one recorded in {META_FILE}")
    if _sha256(base_dir / WEIGHTS) != meta["base_weights_sha256"]:
        raise ModelError(f"{name} patches {meta['base']}, but the weights in {base_dir} are not the ones it was made "
                         "from (checksum differs)")
    weights = load_file(str(base_dir / WEIGHTS))
    for k, d in load_file(str(patch)).items():
        weights[k] = (weights[k].astype(np.float32) + d.astype(np.float32)).astype(weights[k].dtype)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        for item in base_dir.iterdir():
            if item.name in (WEIGHTS, "onnx") or item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, work / item.name)
        save_file(weights, str(work / WEIGHTS), metadata={"format": "pt"})
        (work / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(work, target)  # atomic: another process sees no directory or a whole one
        except OSError:
            if not (target / WEIGHTS).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
