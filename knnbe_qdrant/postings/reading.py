"""Reading postings: JSONL, CSV or Parquet rows in file order, each a Posting or a message saying where and why it
is malformed; and splitting a posting's text into sentences."""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import InputFileError

_SURROGATE = re.compile("[\udc80-\udcff]")
_LINE_BREAKS = re.compile(r"[\r\n\u2022\u25cf\u25aa\u2023]+")  # line breaks and bullets end a sentence too


def split_sentences(text: str, language: str = "en") -> list[str]:
    """Sentences of a posting: lines and bullets first, then sentencex (Wikimedia's segmenter) within each."""
    from sentencex import segment

    out = []
    for line in _LINE_BREAKS.split(text):
        for segment_ in segment(language, line):
            sentence = segment_.strip(" \t-*·")
            if any(ch.isalnum() for ch in sentence):  # a stray "..." or "--" is no sentence
                out.append(sentence)
    return out


@dataclass
class Posting:
    id: str
    text: str


def read_postings(path: str | Path, id_field: str, text_field: str) -> Iterator[Posting | str]:
    """Postings of a JSONL, CSV or Parquet file, in file order; a malformed one comes as a string saying where and
    why (it is reported and skipped, never fatal)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if suffix == ".parquet":
        rows: Iterator[tuple[str, Any]] = _parquet_rows(path, id_field, text_field)
    elif suffix == ".csv":
        rows = _csv_rows(path, id_field, text_field)
    else:
        rows = _jsonl_rows(path)
    for where, row in rows:
        if isinstance(row, str):
            yield f"{path}:{where}: {row}"
            continue
        pid, text = row.get(id_field), row.get(text_field)
        if pid is None or (isinstance(pid, str) and not pid.strip()):
            yield f"{path}:{where}: no {id_field!r}"
        elif isinstance(pid, bool) or not isinstance(pid, (str, int)):
            yield f"{path}:{where}: {id_field!r} must be text or a whole number, got {type(pid).__name__}"
        elif isinstance(text, str) and _SURROGATE.search(text):
            yield f"{path}:{where} (id {pid}): not UTF-8 text"
        elif not isinstance(text, str) or not text.strip():
            yield f"{path}:{where} (id {pid}): {text_field!r} is missing, empty or not text"
        else:
            yield Posting(str(pid), text)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield f"line {line_no}", "not UTF-8"
                continue
            except json.JSONDecodeError as exc:
                yield f"line {line_no}", f"not valid JSON ({exc.msg})"
                continue
            yield f"line {line_no}", row if isinstance(row, dict) else "not a JSON object"


def _csv_rows(path: Path, id_field: str, text_field: str) -> Iterator[tuple[str, Any]]:
    csv.field_size_limit(sys.maxsize)  # a posting is a long field
    # Bytes that are not UTF-8 become lone surrogates, so one bad row is reported and skipped, not the whole file.
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            # strict: a quote left open would otherwise swallow every later posting into one silently
            reader = csv.DictReader(f, strict=True)
            missing = {id_field, text_field} - set(reader.fieldnames or [])
            if missing:
                raise InputFileError(f"{path}:1: not a postings file: the header lacks {sorted(missing)}")
            try:
                for row in reader:
                    yield f"line {reader.line_num}", row
            except csv.Error as exc:
                raise InputFileError(f"{path}:{reader.line_num}: not readable as CSV ({exc})") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parquet_rows(path: Path, id_field: str, text_field: str) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputFileError(f"{path}: reading Parquet needs pyarrow (pip install 'knnbe-qdrant[parquet]')") from exc
    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends: the file is not Parquet
        raise InputFileError(f"{path}: not a Parquet file ({exc})") from None
    missing = {id_field, text_field} - set(file.schema_arrow.names)
    if missing:
        raise InputFileError(f"{path}: not a postings file: no column(s) {sorted(missing)}")
    row_no = 0
    for batch in file.iter_batches(batch_size=1024, columns=[id_field, text_field]):
        for row in batch.to_pylist():
            row_no += 1
            yield f"row {row_no}", row


def count_rows(path: str | Path) -> int | None:
    """How many rows the input holds, for the progress bar's ETA: Parquet metadata, or a quick pass over the file
    (reading is far cheaper than mapping). None when it cannot tell."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                return max(sum(1 for _ in csv.reader(f)) - 1, 0)
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except Exception:  # unreadable here means unreadable in the real pass too, which reports it properly
        return None
