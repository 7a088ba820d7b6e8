"""Benchmark files: the skill-mapping benchmarks' JSONL and span-CSV formats, the shipped validation splits and
SkillSkape dev by name, and gold labels resolved to the store's skill ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import _schema as S
from .._data import TRANSVERSAL, data_file, iter_csv, iter_jsonl, load_taxonomy, skillskape_sentences
from .._errors import InputFileError
from ..store.base import Store

NO_SKILL_LABELS = {"LABEL NOT PRESENT", "UNDERSPECIFIED"}


@dataclass(frozen=True)
class GoldSentence:
    sentence: str
    labels: tuple[str, ...]  # ESCO preferred labels or URIs, as the file gives them


SKILLSKAPE_DEV = "skillskape-dev"
"""Names the SkillSkape dev split shipped with the package (held out of the default memory): a third check."""
TRANSVERSAL_DEV = "transversal-dev"
"""Names a check of ESCO's transversal skills (attitudes, values, social skills, languages), which annotators of
generic postings infer from how a posting describes the person it wants: the sentences of SkillSkape dev and the
TECH and HOUSE validation splits with a transversal gold skill, scored against those gold skills alone."""
SHIPPED = {"tech-validation": "tech_validation.jsonl", "house-validation": "house_validation.jsonl"}
"""The validation splits of the TECH and HOUSE benchmarks, shipped (CC BY 4.0). The test splits are not."""


def read_benchmark(path: str | Path) -> list[GoldSentence]:
    """The canonical JSONL ({"sentence", "labels", "uris"}) or the original span CSV (sentence,span,sub_span,label:
    rows labelled LABEL NOT PRESENT or UNDERSPECIFIED are dropped, spans grouped by sentence, sentences left without
    a label dropped); or `skillskape-dev`, the shipped SkillSkape dev split."""
    if str(path) == SKILLSKAPE_DEV:
        return [GoldSentence(text, tuple(uris)) for text, uris in skillskape_sentences("dev") if uris]
    if str(path) == TRANSVERSAL_DEV:
        return transversal_items()
    if str(path) in SHIPPED:
        path = data_file(SHIPPED[str(path)])
    path = Path(path)
    try:
        head = path.read_bytes()[:4096].decode("utf-8", errors="replace").lstrip("\ufeff").lstrip()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return _read_jsonl(path) if head.startswith("{") else _read_span_csv(path)


def transversal_items() -> list[GoldSentence]:
    """See TRANSVERSAL_DEV. Validation files give preferred labels or URIs; both are mapped to the skills' URIs."""
    skills = load_taxonomy()
    transversal = {s.id for s in skills if s.reuse_level == TRANSVERSAL}
    by_label = {s.label: s.id for s in skills}
    items = []
    for source in (SKILLSKAPE_DEV, *SHIPPED):
        for item in read_benchmark(source):
            gold = tuple(dict.fromkeys(u for u in (by_label.get(x, x) for x in item.labels) if u in transversal))
            if gold:
                items.append(GoldSentence(item.sentence, gold))
    return items


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


def resolve_gold(items: Sequence[GoldSentence], store: Store) -> tuple[list[set[str]], list[str]]:
    """Gold skill ids per sentence, and the gold labels that are not in the store's taxonomy. Those stay in the
    gold set (they can never be found, so they count against the scores) and are reported."""
    by_label: dict[str, str] = {}
    ids: set[str] = set()
    for record in store.scroll(S.SKILLS, where={S.F_TENANT: S.GLOBAL_TENANT}, payload=[S.F_SKILL_ID, S.F_LABEL]):
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
