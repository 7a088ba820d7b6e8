"""The shipped taxonomy and memory sources, and readers for user files. Every read error names file and line."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from ._errors import InputFileError, InvalidInputError
from ._text import normalized

TAXONOMY = "ESCO"
TAXONOMY_VERSION = "v1.1.0"
_ESCO_FILE = "esco_v1.1.0_skills_en.jsonl.gz"

# Memory sources shipped with the package, in the order they are stored.
ESCO_ALT_LABELS = "esco_alt_labels"
ESCO_DESCRIPTIONS = "esco_descriptions"
SKILLSKAPE_TRAIN = "skillskape_train"
ESCO_TEMPLATES = "esco_templates"
ESCO_TRANSVERSAL = "esco_transversal"
TRAINING_SOURCES = (ESCO_ALT_LABELS, ESCO_DESCRIPTIONS, SKILLSKAPE_TRAIN)
"""What the shipped encoder was trained on (`finetune`'s default recipe): kept apart from the memory's defaults, so
that a change of the memory does not change the recipe."""
DEFAULT_MEMORY_SOURCES = (*TRAINING_SOURCES, ESCO_TRANSVERSAL)
"""esco_transversal since 2026-12-06: with clause coverage it gained or held on every validation file (TECH RP@5
+1.3 [+0.0, +4.0], transversal-dev +1.5 [+0.0, +4.4], HOUSE and SkillSkape dev unchanged; docs/accuracy.md)."""
MEMORY_SOURCES = (*DEFAULT_MEMORY_SOURCES, ESCO_TEMPLATES)
TRANSVERSAL = "transversal"
"""ESCO's reuse level of the skills that cross every occupation: attitudes, values, social skills, languages."""

# Job-ad phrasings for ESCO's two kinds of skill: competences are verb phrases ("manage staff"), knowledge items are
# noun phrases ("SQL"). Two per skill (preferred label, one alternative label), picked by a hash of the skill id.
_TEMPLATES = {
    "skill/competence": ("You will {x}.", "The successful candidate is able to {x}.", "Your tasks: {x}.",
                         "We expect you to {x} independently.", "Responsibilities include being able to {x}."),
    "knowledge": ("Knowledge of {x} is required.", "Solid understanding of {x}.", "Experience with {x} is a plus.",
                  "Familiarity with {x} is essential.", "You have a background in {x}."),
}

# How postings describe the person they want, for ESCO's transversal skills: every label and alternative label of
# each, one phrasing each (picked by a hash of the skill id and the label).
_PERSON_TEMPLATES = ("You are able to {x}.", "We are looking for someone who can {x}.",
                     "The ideal candidate knows how to {x}.", "You {x} in your daily work.",
                     "As a person, you are expected to {x}.")
_PERSON_BE_TEMPLATES = tuple(t for t in _PERSON_TEMPLATES if not t.startswith("You {x}"))
"""For "be ..." labels: "You be a driving force in your daily work" is no sentence."""
_PERSON_NOUN_TEMPLATES = ("You are good at {x}.", "We value {x} in the people we hire.",
                          "The ideal candidate is strong in {x}.")  # for "writing Polish", "teamwork principles"
_PERSON_STATE_TEMPLATES = ("You are {x}.", "The ideal candidate is {x}.", "We are looking for someone {x}.")
"""For labels that already say what a person is: "competent in Finnish", "fluent in Polish"."""
_STATES = ("competent ", "proficient ", "fluent ")
_ABLE = ("ability to ", "be able to ", "able to ")
"""Prefixes that only say "can": what follows is a verb phrase ("ability to comprehend ... Finnish")."""


@dataclass(frozen=True)
class Skill:
    id: str
    label: str
    alt_labels: tuple[str, ...] = ()
    description: str = ""
    skill_type: str = ""
    reuse_level: str = ""
    taxonomy: str = TAXONOMY
    taxonomy_version: str = TAXONOMY_VERSION


@dataclass(frozen=True)
class LabelledSentence:
    text: str
    skill_id: str
    source: str
    extra: dict = field(default_factory=dict, compare=False, hash=False)


TUNED_PARAMS = "tuned_params.json"


def tuned_defaults(model: str) -> dict:
    """Scoring parameters `knnbe-qdrant tune --package-defaults` chose for this model on validation data."""
    path = data_file(TUNED_PARAMS)
    return json.loads(path.read_text()).get(model, {}) if path.exists() else {}


def data_file(name: str) -> Path:
    return Path(str(resources.files("knnbe_qdrant") / "data" / name))


def jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict, str | None]]:
    """(line number, object, None) for each non-blank line of a JSONL file, plain or gzipped, or (line number, {},
    the problem) for a line that is not a JSON object. A byte-order mark is not part of the first line. A file that
    cannot be read to its end (missing, not UTF-8) raises InputFileError."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_no, {}, f"not valid JSON ({exc.msg})"
                    continue
                if not isinstance(obj, dict):
                    yield line_no, {}, f"expected a JSON object, got {type(obj).__name__}"
                    continue
                yield line_no, obj, None
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; the first bad line raises InputFileError."""
    for line_no, obj, problem in jsonl_objects(path):
        if problem:
            raise InputFileError(f"{path}:{line_no}: {problem}")
        yield line_no, obj


def iter_csv(path: str | Path, required: Sequence[str], what: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a UTF-8 CSV file whose header names at least the `required` columns."""
    path = Path(path)
    csv.field_size_limit(sys.maxsize)  # a long sentence is a long field, not a broken file
    try:
        # strict: a quote left open runs to the end of the file, which is an error, not one merged last row
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, strict=True)
            try:
                missing = set(required) - set(reader.fieldnames or [])
                if missing:
                    raise InputFileError(f"{path}:1: not {what}: the header lacks {sorted(missing)}")
                for row in reader:
                    yield reader.line_num, row
            except csv.Error as exc:
                raise InputFileError(f"{path}:{reader.line_num}: not readable as CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def load_taxonomy(path: str | Path | None = None) -> list[Skill]:
    """The shipped ESCO skills, or a JSONL file of skills with at least `id` and `label` per line."""
    path = Path(path) if path else data_file(_ESCO_FILE)
    skills: list[Skill] = []
    seen: set[str] = set()
    for line_no, row in iter_jsonl(path):
        # As stored: "x" and "x " (or two spellings of "é") are one id, and "\u200b" is an empty label.
        fields = {key: normalized(row[key]) if isinstance(row.get(key), str) else "" for key in ("id", "label")}
        for key, value in fields.items():
            if not value:
                raise InputFileError(f"{path}:{line_no}: field {key!r} is missing or empty")
        skill_id, label = fields["id"], fields["label"]
        if skill_id in seen:
            raise InputFileError(f"{path}:{line_no}: duplicate skill id {row['id']!r}")
        seen.add(skill_id)
        alts = row.get("alt_labels") or []
        if not isinstance(alts, list) or not all(isinstance(a, str) for a in alts):
            raise InputFileError(f"{path}:{line_no}: field 'alt_labels' must be a list of strings")
        skills.append(
            Skill(
                id=skill_id,
                label=label,
                alt_labels=tuple(a for a in map(normalized, alts) if a),
                description=normalized(str(row.get("description") or "")),
                skill_type=str(row.get("skill_type") or ""),
                reuse_level=str(row.get("reuse_level") or ""),
                taxonomy=str(row.get("taxonomy") or TAXONOMY),
                taxonomy_version=str(row.get("taxonomy_version") or TAXONOMY_VERSION),
            )
        )
    if not skills:
        raise InputFileError(f"{path}: no skills in file")
    return skills


def skillskape_sentences(split: str) -> Iterator[tuple[str, list[str]]]:
    """(sentence, ESCO URIs) from the shipped SkillSkape split; sentences SkillSkape labels UNK have no URIs."""
    for _, row in iter_jsonl(data_file(f"skillskape_{split}.jsonl.gz")):
        yield row["text"], list(row["skills"])


def template_sentences(skill: Skill) -> list[str]:
    """Two job-ad-style sentences for a skill, the same on every run (the choice hashes the skill id)."""
    templates = _TEMPLATES.get(skill.skill_type, _TEMPLATES["skill/competence"])
    h = int(hashlib.sha256(skill.id.encode()).hexdigest(), 16)
    first = h % len(templates)
    out = [templates[first].format(x=skill.label)]
    alts = [a for a in skill.alt_labels if a != skill.label]
    if alts:
        second = templates[(h // len(templates) + 1 + first) % len(templates)]
        out.append(second.format(x=alts[(h >> 32) % len(alts)]))
    return out


def person_sentences(skill: Skill) -> list[str]:
    """Posting-style sentences describing a person with a transversal skill: one per label and alternative label,
    the same on every run."""
    out = []
    for label in dict.fromkeys((skill.label, *skill.alt_labels)):
        h = int(hashlib.sha256(f"{skill.id}|{label}".encode()).hexdigest(), 16)
        x = label
        templates: tuple[str, ...]
        able = next((p for p in _ABLE if x.lower().startswith(p)), None)
        if able:
            x, templates = x[len(able):], _PERSON_TEMPLATES
        elif x.lower().startswith(_STATES):
            templates = _PERSON_STATE_TEMPLATES
        elif skill.skill_type != "knowledge" and not x.split(" ", 1)[0].endswith("ing"):
            templates = _PERSON_BE_TEMPLATES if x.startswith("be ") else _PERSON_TEMPLATES
        else:
            templates = _PERSON_NOUN_TEMPLATES
        out.append(templates[h % len(templates)].format(x=x))
    return out


def default_memory(skills: Sequence[Skill], sources: Iterable[str] = DEFAULT_MEMORY_SOURCES) -> list[LabelledSentence]:
    """The labelled sentences of the default memory bank, restricted to skills in `skills`, without duplicates."""
    known = {s.id for s in skills}
    out: list[LabelledSentence] = []
    for source in sources:
        if source == ESCO_ALT_LABELS:
            out += [LabelledSentence(a, s.id, source) for s in skills for a in s.alt_labels]
        elif source == ESCO_DESCRIPTIONS:
            out += [LabelledSentence(s.description, s.id, source) for s in skills if s.description]
        elif source == ESCO_TEMPLATES:
            out += [LabelledSentence(t, s.id, source) for s in skills for t in template_sentences(s)]
        elif source == ESCO_TRANSVERSAL:
            out += [LabelledSentence(t, s.id, source) for s in skills if s.reuse_level == TRANSVERSAL
                    for t in person_sentences(s)]
        elif source == SKILLSKAPE_TRAIN:
            out += [
                LabelledSentence(text, uri, source)
                for text, uris in skillskape_sentences("train")
                for uri in uris
                if uri in known
            ]
        else:
            raise InvalidInputError(f"unknown memory source {source!r}; known: {', '.join(MEMORY_SOURCES)}")
    seen: set[tuple[str, str]] = set()
    unique = []
    for item in out:
        key = (item.text, item.skill_id)
        if item.text.strip() and key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def iter_sentences(stream: BinaryIO, origin: str) -> Iterator[str]:
    """Sentences of a byte stream, one per line, read as they come (memory stays bounded whatever the input's size);
    blank lines are skipped; bytes that are not UTF-8 raise InputFileError naming the line."""
    offset = 0
    for line_no, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputFileError(
                f"{origin}:{line_no}: not UTF-8 text ({exc.reason} at byte {offset + exc.start})") from None
        offset += len(raw)
        for line in text.splitlines():
            if line.strip():
                yield line.strip()
