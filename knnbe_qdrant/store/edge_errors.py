"""What Qdrant Edge's bare exceptions mean for the user: a full disk is said as one (free space and try again; the
store is not damaged), never as damage (whose way out, a restore or a rebuild, needs more room still) nor as a
traceback. Measured on a 700 MB tmpfs, 2026-12-07: a store that cannot save its state when loaded ("No space left on
device (os error 28)"), an index that checks its room first ("Not enough space available for optimization, needed:
1.25 GiB"), a write whose log cannot grow."""

from __future__ import annotations

import shutil
from pathlib import Path

from .._errors import StoreError

_NO_SPACE = ("No space left on device", "os error 28", "Not enough space")


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


def disk_full(exc: BaseException, doing: str) -> str | None:
    """What to say when `exc` says the disk is full (`doing`: what failed, e.g. "opening the embedded store at X");
    None when it says something else."""
    if not any(sign in str(exc) for sign in _NO_SPACE):
        return None
    return (f"{doing} failed: the disk is full ({first_line(exc)}); free space and try again (the store is not "
            "damaged, and nothing that failed was acknowledged)")


def engine_failure(exc: BaseException, doing: str) -> str:
    """What to say of a write or an indexing that failed, for lack of space or another reason."""
    return disk_full(exc, doing) or (f"{doing} failed ({first_line(exc)}); nothing that failed was acknowledged, and "
                                     "what was acknowledged before is kept")


MIN_FREE_BYTES = 64 << 20
"""What a write leaves free at least: the engine maps its files, and a page of one that a full disk cannot back is a
SIGBUS, which ends the process (a service with it) instead of failing the write; its log grows by 32 MB segments."""


def check_room(path: Path) -> None:
    """Refuse a write, before it starts, when the disk holding the store is nearly full."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:  # the store's own reads and writes say what is wrong with the path
        return
    if free < MIN_FREE_BYTES:
        raise StoreError(f"the disk holding {path} has {free >> 20} MB free, under the {MIN_FREE_BYTES >> 20} MB a "
                         "write needs (on a full disk the engine would crash): free space and try again; nothing "
                         "was written")
