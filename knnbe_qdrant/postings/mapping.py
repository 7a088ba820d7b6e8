"""`knnbe-qdrant map-postings`: whole job postings in, skills per posting out; streaming, resumable.

Aggregation (per posting): each sentence is mapped with kNNBE (decomposed or not as asked, else as the store
maps); a skill's posting score is the highest score it gets in any of the posting's sentences, and its support is
every sentence in whose top `sentence_top` it appears (with that sentence's score, and the piece of the sentence it
came from when decomposition found it there). Skills rank by posting score, then by how many sentences support them,
then by id.

Resuming: the output is written in input order, one line per posting, flushed batch by batch. On restart the
postings already in the output are counted (a torn last line from a crash is cut off) and skipped in the input,
so the final output is the same as an uninterrupted run's, with no posting twice or missing.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._errors import InvalidInputError
from .._mapper import SkillMapper
from .._results import SentenceResult
from .reading import Posting, count_rows, read_postings, split_sentences


@dataclass(frozen=True)
class PostingSettings:
    """How each posting is mapped: skills kept per posting and per sentence, whose view, decomposition (None: the
    store's default)."""

    top: int = 20
    sentence_top: int = 10
    tenant: str | None = None
    decompose: bool | None = None

    def __post_init__(self) -> None:
        if self.top < 1 or self.sentence_top < 1:
            raise InvalidInputError("--top and --sentence-top must be >= 1")


@dataclass
class PostingsReport:
    written: int = 0
    skipped_already_done: int = 0
    malformed: list[str] = field(default_factory=list)
    sentences: int = 0


class _Aggregate:
    """One posting's skills, folded sentence by sentence (see the module docstring for the rule), so that a posting
    of any length keeps only what its output needs: per skill, its best score and its supporting sentences."""

    def __init__(self) -> None:
        self.skills: dict[str, dict[str, Any]] = {}
        self.sentences = 0

    def add(self, results: Sequence[SentenceResult]) -> None:
        for result in results:
            self.sentences += 1
            for match in result.skills:
                entry = self.skills.setdefault(match.id, {"id": match.id, "label": match.label, "score": match.score,
                                                          "sentences": []})
                entry["score"] = max(entry["score"], match.score)
                support = {"text": result.text, "score": match.score}
                if match.piece is not None:
                    support["piece"] = match.piece
                if match.tokens is not None:
                    support["tokens"] = match.tokens
                entry["sentences"].append(support)

    def record(self, posting: Posting, top: int) -> dict[str, Any]:
        ranked = sorted(self.skills.values(), key=lambda s: (-s["score"], -len(s["sentences"]), s["id"]))[:top]
        for entry in ranked:
            entry["sentences"].sort(key=lambda s: -s["score"])
        return {"id": posting.id, "sentences": self.sentences, "skills": ranked}


def aggregate(posting: Posting, results: Sequence[SentenceResult], top: int) -> dict[str, Any]:
    """The output record of one posting (see the module docstring for the rule)."""
    folded = _Aggregate()
    folded.add(results)
    return folded.record(posting, top)


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


MAP_CHUNK = 256
"""Sentences mapped per call, whatever the postings: memory is bounded by this, not by the input."""


def map_batch(mapper: SkillMapper, batch: Batch, settings: PostingSettings) -> list[dict]:
    """The output records of a batch of (posting, its sentences): its sentences mapped MAP_CHUNK at a time across
    postings, each chunk's results folded into its postings' aggregates and then dropped."""
    folds = [_Aggregate() for _ in batch]
    owners = [(i, s) for i, (_, sentences) in enumerate(batch) for s in sentences]
    for start in range(0, len(owners), MAP_CHUNK):
        chunk = owners[start : start + MAP_CHUNK]
        results = mapper.map([s for _, s in chunk], top=settings.sentence_top, tenant=settings.tenant,
                             decompose=settings.decompose)
        for (i, _), result in zip(chunk, results):
            folds[i].add([result])
    return [fold.record(posting, settings.top) for fold, (posting, _) in zip(folds, batch)]


class Runner(Protocol):
    """Maps batches of postings: `submit` hands one over, `result` waits for its records. At most `max_in_flight`
    batches are submitted and not yet collected."""

    max_in_flight: int

    def submit(self, batch: Batch) -> Any: ...

    def result(self, handle: Any) -> list[dict]: ...

    def close(self) -> None: ...


class LocalRunner:
    """Maps each batch in this process, as it is submitted."""

    max_in_flight = 1

    def __init__(self, mapper: SkillMapper, settings: PostingSettings) -> None:
        self.mapper, self.settings = mapper, settings

    def submit(self, batch: Batch) -> list[dict]:
        return map_batch(self.mapper, batch, self.settings)

    def result(self, handle: list[dict]) -> list[dict]:
        return handle

    def close(self) -> None:
        pass


def map_postings(
    runner: Runner,
    source: str | Path,
    out: str | Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    batch_sentences: int = 256,
    progress: bool = True,
    on_malformed: Callable[[str], None] | None = None,
    run: dict[str, Any] | None = None,
) -> PostingsReport:
    """Map every posting of `source` and write one JSON line per posting to `out` (or Parquet, for a .parquet
    `out`: the lines are kept in `out`.partial.jsonl until the end, then converted).

    `runner` maps batches: a LocalRunner, or a RayRunner spreading them over Ray actors. Either way the postings
    are read, checked and split here, and the records written here in input order, so the output is the same.
    `run` describes the run (input, fields, tenant, store...): an existing output is resumed only when it matches."""
    out = Path(out)
    if not out.parent.is_dir():
        raise InvalidInputError(f"{out}: the folder {out.parent} does not exist")
    journal = out.with_name(out.name + ".partial.jsonl") if out.suffix.lower() == ".parquet" else out
    report = PostingsReport()
    fresh = not journal.exists() or journal.stat().st_size == 0
    _check_same_run(journal, run or {}, fresh)
    done = _already_written(journal)
    try:
        _run(runner, source, out, journal, id_field, text_field, batch_sentences, progress, on_malformed, report,
             done)
    except BaseException:
        if fresh and journal.exists() and journal.stat().st_size == 0:  # failed before writing anything: leave none
            journal.unlink()
            _run_file(journal).unlink(missing_ok=True)
        raise
    return report


def _run_file(journal: Path) -> Path:
    return journal.with_name(journal.name + ".run.json")


def _check_same_run(journal: Path, run: dict[str, Any], fresh: bool) -> None:
    """Resuming trusts an existing output only if the same run wrote it: same input, fields, tenant, store, limits
    (recorded beside it). A fresh output records them."""
    record = _run_file(journal)
    if fresh:
        record.write_text(json.dumps(run, sort_keys=True) + "\n", encoding="utf-8")
        return
    try:
        before = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if before != json.loads(json.dumps(run)):
        what = "no record of the run that wrote it" if before is None else f"was written by another run ({before})"
        raise InvalidInputError(f"{journal} already holds results, and {what}: resuming would mix runs; name another "
                                "output, or remove this one to start over")


def _run(runner: Runner, source: str | Path, out: Path, journal: Path, id_field: str, text_field: str,
         batch_sentences: int, progress: bool, on_malformed: Callable[[str], None] | None, report: PostingsReport,
         done: int) -> None:
    from tqdm.auto import tqdm

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
        _run_file(journal).unlink(missing_ok=True)


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
