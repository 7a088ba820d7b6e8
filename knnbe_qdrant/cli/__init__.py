"""The `knnbe-qdrant` command: a thin shell over the library (parse, call, print). One module per command group;
each registers its subcommands with `set_defaults(func=...)`, and `main` calls that function.

docs/cli.md is generated from this parser's help (scripts/gen_cli_docs.py; a test keeps it current).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

from .._errors import InvalidInputError, KnnbeError
from .._process import own_process
from . import curation, evaluation, mapping, service, store, training
from ._common import add_store_args, store_parent

GROUPS = (store, mapping, curation, service, evaluation, training)
"""In the order their commands are listed by --help."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="knnbe-qdrant", description="Map job-posting text to ESCO skills with kNNBE on Qdrant.",
        epilog="The query encoder: env KNNBE_RUNTIME (auto, onnx, openvino, torch) and KNNBE_PRECISION (auto, fp32, "
               "int8; int8 needs the int8 extra and is quantized once per model). Stored vectors are always fp32.",
    )
    parser.add_argument("--version", action="version", version=f"knnbe-qdrant {__version__}")
    add_store_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    parent = store_parent()
    for group in GROUPS:
        group.register(sub, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # qdrant-client's version check warns from a thread when the server cannot be reached; the first real call
    # says so in one line of ours. (Its warning about incompatible versions stays.)
    warnings.filterwarnings("ignore", message="Failed to obtain server version", category=UserWarning)
    args = build_parser().parse_args(argv)
    own_process()
    started = time.perf_counter()
    try:
        return int(args.func(args))
    except KnnbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidInputError) else 1
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


__all__ = ["build_parser", "main"]
