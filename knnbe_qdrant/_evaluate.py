"""`knnbe-qdrant eval`: a benchmark file in, RP@5 / RP@10 / MRR out, for each scoring mode on the same encodings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _schema as S
from ._data import iter_csv, iter_jsonl
from ._errors import InputFileError
from ._mapper import MODES, SkillMapper
from ._metrics import evaluate

NO_SKILL_LABELS = {"LABEL NOT PRESENT", "UNDERSPECIFIED"}
DEFAULT_DEPTH = 100


@dataclass(frozen=True)
class GoldSentence:
    sentence: str
    labels: tuple[str, ...]  # ESCO preferred labels or URIs, as the file gives them


SKILLSKAPE_DEV = "skillskape-dev"
"""Names the SkillSkape dev split shipped with the package (held out of the default memory): a third check."""
SHIPPED = {"tech-validation": "tech_validation.jsonl", "house-validation": "house_validation.jsonl"}
"""The validation splits of the TECH and HOUSE benchmarks, shipped (CC BY 4.0). The test splits are not."""


def read_benchmark(path: str | Path) -> list[GoldSentence]:
    """The canonical JSONL ({"sentence", "labels", "uris"}) or the original span CSV (sentence,span,sub_span,label:
    rows labelled LABEL NOT PRESENT or UNDERSPECIFIED are dropped, spans grouped by sentence, sentences left without
    a label dropped); or `skillskape-dev`, the shipped SkillSkape dev split."""
    if str(path) == SKILLSKAPE_DEV:
        from ._data import skillskape_sentences

        return [GoldSentence(text, tuple(uris)) for text, uris in skillskape_sentences("dev") if uris]
    if str(path) in SHIPPED:
        from ._data import _data_file

        path = _data_file(SHIPPED[str(path)])
    path = Path(path)
    try:
        head = path.read_bytes()[:4096].decode("utf-8", errors="replace").lstrip()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return _read_jsonl(path) if head.startswith("{") else _read_span_csv(path)


def _read_jsonl(path: Path) -> list[GoldSentence]:
    items = []
    for line_no, row in iter_jsonl(path):
        sentence, labels, uris = row.get("sentence"), row.get("labels"), row.get("uris")
        if not isinstance(sentence, str) or not sentence.strip():
            raise InputFileError(f"{path}:{line_no}: field 'sentence' is missing or empty")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise InputFileError(f"{path}:{line_no}: field 'labels' must be a non-empty list of strings")
        if uris is not None and (not isinstance(uris, list) or len(uris) != len(labels)):
            raise InputFileError(f"{path}:{line_no}: field 'uris' must be a list as long as 'labels'")
        # A URI identifies the skill exactly; where the file has none, the label is matched to a preferred label.
        gold = tuple(u if isinstance(u, str) and u else lab for lab, u in zip(labels, uris or [None] * len(labels)))
        items.append(GoldSentence(sentence.strip(), gold))
    return items


def _read_span_csv(path: Path) -> list[GoldSentence]:
    grouped: dict[str, list[str]] = {}
    for line_no, row in iter_csv(path, ("sentence", "label"), "a benchmark span file"):
        sentence = (row["sentence"] or "").strip()
        if not sentence:
            raise InputFileError(f"{path}:{line_no}: empty sentence")
        labels = grouped.setdefault(sentence, [])
        label = (row["label"] or "").strip()
        if label and label not in NO_SKILL_LABELS and label not in labels:
            labels.append(label)
    return [GoldSentence(s, tuple(labels)) for s, labels in grouped.items() if labels]


def resolve_gold(items: Sequence[GoldSentence], mapper: SkillMapper) -> tuple[list[set[str]], list[str]]:
    """Gold skill ids per sentence, and the gold labels that are not in the store's taxonomy. Those stay in the
    gold set (they can never be found, so they count against the scores) and are reported."""
    by_label: dict[str, str] = {}
    ids: set[str] = set()
    for record in mapper.store.scroll(S.SKILLS, where={S.F_TENANT: S.GLOBAL_TENANT}, payload=[S.F_SKILL_ID, S.F_LABEL]):
        ids.add(record.payload[S.F_SKILL_ID])
        by_label[record.payload[S.F_LABEL]] = record.payload[S.F_SKILL_ID]
    golds, unknown = [], []
    for item in items:
        gold = set()
        for label in item.labels:
            skill = label if label in ids else by_label.get(label)
            if skill is None:
                unknown.append(label)
                gold.add(f"unknown:{label}")
            else:
                gold.add(skill)
        golds.append(gold)
    return golds, unknown


def run_eval(
    mapper: SkillMapper, path: str | Path, modes: Sequence[str] = ("knnbe",), depth: int = DEFAULT_DEPTH
) -> dict[str, dict]:
    """{mode: {"n", "rp@5", "rp@10", "mrr", "unknown_gold"}}; every mode ranks the same encodings."""
    items = read_benchmark(path)
    if not items:
        raise InputFileError(f"{path}: no sentence with a gold skill")
    return eval_items(mapper, items, modes, depth)


def eval_items(
    mapper: SkillMapper, items: Sequence[GoldSentence], modes: Sequence[str] = ("knnbe",), depth: int = DEFAULT_DEPTH,
    *, resolved: tuple[list[set[str]], list[str]] | None = None,
) -> dict[str, dict]:
    """As run_eval, for items already read; `resolved` is their resolve_gold result, where the caller has it."""
    golds, unknown = resolved or resolve_gold(items, mapper)
    sentences = [i.sentence for i in items]
    vectors = mapper.encoder.encode(sentences)
    report = {}
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        results = mapper.map_vectors(sentences, vectors, top=depth, mode=mode)
        scores = evaluate([[s.id for s in r.skills] for r in results], golds)
        report[mode] = {**scores, "unknown_gold": len(unknown)}
    return report


def format_report(path: str, report: dict[str, dict]) -> str:
    lines = [f"{path}", f"  {'mode':<11} {'n':>4} {'RP@5':>6} {'RP@10':>6} {'MRR':>6}  gold labels not in taxonomy"]
    for mode, r in report.items():
        lines.append(
            f"  {mode:<11} {r['n']:>4} {100 * r['rp@5']:6.1f} {100 * r['rp@10']:6.1f} {100 * r['mrr']:6.1f}  "
            f"{r['unknown_gold']}"
        )
    return "\n".join(lines)


def to_json(report: dict[str, dict]) -> str:
    if len(report) == 1:
        return json.dumps(next(iter(report.values())))
    return json.dumps(report)
