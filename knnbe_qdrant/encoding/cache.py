"""Where the encoders keep what they make once and reuse (a patched model, its ONNX export, OpenVINO's compiled
model): the user's cache, or a private temporary folder where that cannot be written."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("knnbe_qdrant.encoding")
_warned: set[str] = set()


def user_cache(kind: str) -> Path:
    """The folder for cached `kind` ("models", "onnx", "openvino"), made if missing: `$XDG_CACHE_HOME` or
    `~/.cache`, under `knnbe-qdrant/`. A container whose home is read-only or unknown (an arbitrary uid, HOME=/) has
    none: every command that loaded a model then failed with a traceback. There, a folder of the temporary
    directory that only this user owns is used instead, and said once."""
    try:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knnbe-qdrant" / kind
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
        reason = f"{folder} is not writable"
    except (OSError, RuntimeError) as exc:  # RuntimeError: Path.home() with no HOME and no passwd entry
        reason = str(exc)
    folder = _private_temp() / kind
    folder.mkdir(exist_ok=True)
    if kind not in _warned:
        _warned.add(kind)
        log.warning("the cache folder cannot be used (%s): using %s, which lasts until the machine's temporary files "
                    "are cleaned (set XDG_CACHE_HOME to keep it)", reason, folder)
    return folder


def _private_temp() -> Path:
    """`<tmp>/knnbe-qdrant-<uid>`, kept across runs, where it is this user's alone (owned, no one else may write):
    another user could otherwise plant a model there. Else a new folder of its own."""
    folder = Path(tempfile.gettempdir()) / f"knnbe-qdrant-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return folder
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="knnbe-qdrant-"))
