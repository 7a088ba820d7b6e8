"""Reading files of labelled sentences (`memory import`): JSONL or CSV with `text`, `skill` and an optional `source`.

The format is told by the first bytes (after a byte-order mark and blank space), read without loading the file.
Rows come as (line number, row, problem): a line that is not JSON, not an object, or whose values are not text is a
bad row with its reason, and reading goes on. What makes the rest of the file unreadable (bytes that are not UTF-8,
a CSV whose quoting breaks) raises InputFileError naming the line; `check_readable` finds that before anything is
stored, so such a file stores nothing.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._data import jsonl_objects
from ._errors import InputFileError, InvalidInputError, KnnbeError
from ._text import MAX_MEMORY_TEXT, MAX_SKILL_REF, MAX_SOURCE, check_optional_text, check_text

FIELDS = ("text", "skill", "source")
Row = tuple[int, dict[str, str], str | None]


def sniff(path: str | Path) -> str:
    """"jsonl" when the first meaningful byte opens a JSON object, else "csv"."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return "jsonl" if head[:1] == b"{" else "csv"


def _typed(row: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    clean: dict[str, str] = {}
    for field in FIELDS:
        value = row.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            kind = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
                type(value), type(value).__name__)
            return {}, f"field {field!r} must be text, got {kind}"
        clean[field] = value
    return clean, None


def _jsonl(path: Path) -> Iterator[Row]:
    for line_no, obj, problem in jsonl_objects(path):
        yield (line_no, {}, problem) if problem else (line_no, *_typed(obj))


def _csv(path: Path) -> Iterator[Row]:
    csv.field_size_limit(sys.maxsize)  # a long sentence is a long field, not a broken file
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, strict=True)  # a quote left open is an error, not a merged last row
            missing = {"text", "skill"} - set(reader.fieldnames or [])
            if missing:
                raise InputFileError(f"{path}:1: not a labelled-sentence file: the header lacks {sorted(missing)}")
            try:
                for row in reader:
                    yield reader.line_num, {k: v for k, v in row.items() if k in FIELDS and v is not None}, None
            except csv.Error as exc:
                raise InputFileError(f"{path}:{reader.line_num}: not readable as CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_labelled(path: str | Path) -> Iterator[Row]:
    path = Path(path)
    return _jsonl(path) if sniff(path) == "jsonl" else _csv(path)


def check_readable(path: str | Path) -> int:
    """Read the whole file once, storing nothing; raise InputFileError if it cannot be read to the end. Returns the
    number of rows (good or bad)."""
    return sum(1 for _ in read_labelled(path))


def hf_rows(name: str, split: str, text_column: str, skill_column: str) -> Iterator[Row]:
    """The rows of a Hugging Face dataset split (a hub name, which needs internet, or a local dataset directory),
    numbered from 1, as `read_labelled` gives a file's."""
    try:
        import datasets
    except ImportError:
        raise KnnbeError("importing a Hugging Face dataset needs the 'datasets' package: "
                         "pip install 'knnbe-qdrant[datasets]'") from None
    try:
        rows = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as exc:  # hub or network errors, unknown split, unreadable files: all mean "cannot load"
        raise InputFileError(f"{name}: cannot load the dataset split {split!r} ({exc})") from exc
    columns = rows.column_names or []
    missing = {text_column, skill_column} - set(columns) if columns else set()
    if missing:
        raise InputFileError(f"{name}: the dataset has no column {sorted(missing)}; it has {columns} "
                             "(name them with --text-column / --skill-column)")
    return ((i, *_typed({"text": r.get(text_column), "skill": r.get(skill_column)})) for i, r in enumerate(rows, 1))


def write_labelled(path: str | Path, rows: list[dict[str, str]]) -> int:
    """Write rows of `FIELDS` as JSONL, or CSV by suffix (`memory export`); returns how many."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidInputError(f"{path}: the folder {path.parent} does not exist")
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(f, fieldnames=list(FIELDS))
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def row_problem(text: str, skill: str, source: str) -> str | None:
    """Why a row's texts cannot be stored (see _text.check_text), or None."""
    try:
        check_text(text, "'text'", max_chars=MAX_MEMORY_TEXT)
        check_text(skill, "'skill'", max_chars=MAX_SKILL_REF)
        check_optional_text(source, "'source'", max_chars=MAX_SOURCE)
    except InvalidInputError as exc:
        return str(exc)
    return None
