"""Regenerate the data files shipped in knnbe_qdrant/data/ from the raw public sources.

Run once by maintainers, never at install or run time:

    python scripts/prepare_data.py ../shared/data

It reads the official ESCO v1.1.0 CSV zip and the SkillSkape CSVs, and writes compact gzipped JSONL with
only the fields the product uses. SkillSkape labels (ESCO preferred labels) are resolved to ESCO URIs here,
so the runtime never guesses; a label that does not resolve stops the script.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "knnbe_qdrant" / "data"


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    # mtime=0 keeps the gzip bytes reproducible, so re-running the script yields no spurious diff.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    print(f"wrote {path.relative_to(OUT.parents[1])}: {len(rows)} rows, {path.stat().st_size / 1e6:.2f} MB")


def esco_skills(zip_path: Path) -> list[dict]:
    with zipfile.ZipFile(zip_path) as zf, zf.open("skills_en.csv") as f:
        reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8"))
        skills = []
        for r in reader:
            alts = [a.strip() for a in r["altLabels"].split("\n") if a.strip()]
            skills.append(
                {
                    "id": r["conceptUri"],
                    "label": r["preferredLabel"].strip(),
                    "alt_labels": alts,
                    "description": r["description"].strip(),
                    "skill_type": r["skillType"],
                    "reuse_level": r["reuseLevel"],
                }
            )
    skills.sort(key=lambda s: s["id"])
    return skills


def skillskape(csv_path: Path, uri_by_label: dict[str, str]) -> list[dict]:
    rows = []
    with open(csv_path, encoding="utf-8", newline="") as f:
        for line_no, r in enumerate(csv.DictReader(f), start=2):
            labels = [s for s in ast.literal_eval(r["skills"]) if s != "UNK"]
            missing = [s for s in labels if s not in uri_by_label]
            if missing:
                sys.exit(f"{csv_path}:{line_no}: labels not in ESCO v1.1.0: {missing}")
            rows.append({"text": r["sentence"].strip(), "skills": [uri_by_label[s] for s in labels]})
    return rows


def main(shared_data: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    skills = esco_skills(shared_data / "esco" / "esco_v1.1.0_en_csv.zip")
    write_jsonl_gz(OUT / "esco_v1.1.0_skills_en.jsonl.gz", skills)
    uri_by_label = {s["label"]: s["id"] for s in skills}
    for split in ("train", "dev"):
        rows = skillskape(shared_data / "memory" / "skillskape" / f"{split}.csv", uri_by_label)
        write_jsonl_gz(OUT / f"skillskape_{split}.jsonl.gz", rows)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
