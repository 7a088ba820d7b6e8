"""`knnbe-qdrant map-postings`: whole job postings in, skills per posting out; streaming, resumable.

Aggregation (per posting): each sentence is mapped with kNNBE; a skill's posting score is the highest score it gets
in any of the posting's sentences, and its support is every sentence in whose top `sentence_top` it appears (with
that sentence's score). Skills rank by posting score, then by how many sentences support them, then by id.

Resuming: the output is written in input order, one line per posting, flushed batch by batch. On restart the
postings already in the output are counted (a torn last line from a crash is cut off) and skipped in the input,
so the final output is the same as an uninterrupted run's, with no posting twice or missing.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import InputFileError
from ._mapper import SkillMapper
from ._results import SentenceResult

_LINE_BREAKS = re.compile(r"[\r\n\u2022\u25cf\u25aa\u2023]+")  # line breaks and bullets end a sentence too


def split_sentences(text: str, language: str = "en") -> list[str]:
    """Sentences of a posting: lines and bullets first, then sentencex (Wikimedia's segmenter) within each."""
    from sentencex import segment

    out = []
    for line in _LINE_BREAKS.split(text):
        for sentence in segment(language, line):
            sentence = sentence.strip(" \t-*·")
            if any(ch.isalnum() for ch in sentence):  # a stray "..." or "--" is no sentence
                out.append(sentence)
    return out


@dataclass
class Posting:
    id: str
    text: str


@dataclass
class PostingsReport:
    written: int = 0
    skipped_already_done: int = 0
    malformed: list[str] = field(default_factory=list)
    sentences: int = 0


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
    from ._data import iter_csv

    csv.field_size_limit(sys.maxsize)  # a posting is a long field
    for line_no, row in iter_csv(path, (id_field, text_field), "a postings file"):
        yield f"line {line_no}", row


def _parquet_rows(path: Path, id_field: str, text_field: str) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputFileError(f"{path}: reading Parquet needs pyarrow (pip install 'knnbe-qdrant[parquet]')") from exc
    file = pq.ParquetFile(path)
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


def aggregate(posting: Posting, results: Sequence[SentenceResult], top: int) -> dict[str, Any]:
    """The output record of one posting (see the module docstring for the rule)."""
    skills: dict[str, dict[str, Any]] = {}
    for result in results:
        for match in result.skills:
            entry = skills.setdefault(match.id, {"id": match.id, "label": match.label, "score": match.score,
                                                 "sentences": []})
            entry["score"] = max(entry["score"], match.score)
            entry["sentences"].append({"text": result.text, "score": match.score})
    ranked = sorted(skills.values(), key=lambda s: (-s["score"], -len(s["sentences"]), s["id"]))[:top]
    for entry in ranked:
        entry["sentences"].sort(key=lambda s: -s["score"])
    return {"id": posting.id, "sentences": len(results), "skills": ranked}


def _already_written(out: Path) -> int:
    """Postings already in a JSONL output; a torn last line (a crash mid-write) is cut off first."""
    if not out.exists():
        return 0
    with open(out, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            f.truncate(keep)
    return data[:keep].count(b"\n")


Batch = list[tuple[Posting, list[str]]]


def map_batch(mapper: SkillMapper, batch: Batch, top: int, sentence_top: int, tenant: str | None) -> list[dict]:
    """The output records of a batch of (posting, its sentences): all sentences mapped in one call."""
    texts = [s for _, sentences in batch for s in sentences]
    results = mapper.map(texts, top=sentence_top, tenant=tenant, batch_size=max(len(texts), 1))
    records, start = [], 0
    for posting, sentences in batch:
        records.append(aggregate(posting, results[start : start + len(sentences)], top))
        start += len(sentences)
    return records


class LocalRunner:
    """Maps each batch in this process, as it is submitted."""

    max_in_flight = 1

    def __init__(self, mapper: SkillMapper, top: int, sentence_top: int, tenant: str | None) -> None:
        self.args = (mapper, top, sentence_top, tenant)

    def submit(self, batch: Batch) -> list[dict]:
        mapper, top, sentence_top, tenant = self.args
        return map_batch(mapper, batch, top, sentence_top, tenant)

    def result(self, handle: list[dict]) -> list[dict]:
        return handle

    def close(self) -> None:
        pass


def map_postings(
    runner: LocalRunner | Any,
    source: str | Path,
    out: str | Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    batch_sentences: int = 256,
    progress: bool = True,
    on_malformed: Any = None,
) -> PostingsReport:
    """Map every posting of `source` and write one JSON line per posting to `out` (or Parquet, for a .parquet
    `out`: the lines are kept in `out`.partial.jsonl until the end, then converted).

    `runner` maps batches: a LocalRunner, or a RayRunner spreading them over Ray actors. Either way the postings
    are read, checked and split here, and the records written here in input order, so the output is the same."""
    from collections import deque

    from tqdm.auto import tqdm

    out = Path(out)
    journal = out.with_name(out.name + ".partial.jsonl") if out.suffix.lower() == ".parquet" else out
    report = PostingsReport()
    done = _already_written(journal)
    total = count_rows(source) if progress else None
    pending: Batch = []
    n_pending = 0
    in_flight: deque = deque()
    with open(journal, "a", encoding="utf-8") as sink, tqdm(
        desc="postings", unit="posting", disable=not progress, total=total, smoothing=0.1
    ) as bar:

        def submit() -> None:
            nonlocal n_pending
            in_flight.append((runner.submit(list(pending)), len(pending), n_pending))
            pending.clear()
            n_pending = 0
            drain(runner.max_in_flight - 1)

        def drain(keep: int) -> None:
            while len(in_flight) > keep:
                handle, n_postings, n_sentences = in_flight.popleft()
                for record in runner.result(handle):
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                os.fsync(sink.fileno())  # what the next run counts as done is on disk
                report.written += n_postings
                report.sentences += n_sentences
                bar.update(n_postings)
                bar.set_postfix(sentences_per_s=f"{report.sentences / max(bar.format_dict['elapsed'], 1e-9):.0f}")

        valid = 0
        for item in read_postings(source, id_field, text_field):
            if isinstance(item, str):
                report.malformed.append(item)
                bar.update(1)
                if on_malformed:
                    on_malformed(item)
                continue
            valid += 1
            if valid <= done:
                report.skipped_already_done += 1
                bar.update(1)
                continue
            sentences = split_sentences(item.text)  # none (punctuation only, say): written with no skills
            pending.append((item, sentences))
            n_pending += len(sentences)
            if n_pending >= batch_sentences:
                submit()
        if pending:
            submit()
        drain(0)
    if journal != out:
        _jsonl_to_parquet(journal, out)
        journal.unlink()
    return report


def _jsonl_to_parquet(journal: Path, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    tmp = out.with_name(out.name + ".tmp")
    with open(journal, encoding="utf-8") as f:
        while True:
            lines = [line for _, line in zip(range(10_000), f)]
            if not lines:
                break
            rows = [json.loads(line) for line in lines]
            for r in rows:
                r["skills"] = json.dumps(r["skills"], ensure_ascii=False)  # nested lists stay one JSON column
            table = pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("sentences", pa.int64()),
                                                                  ("skills", pa.string())]))
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
    if writer is None:
        writer = pq.ParquetWriter(tmp, pa.schema([("id", pa.string()), ("sentences", pa.int64()),
                                                  ("skills", pa.string())]))
    writer.close()
    os.replace(tmp, out)
