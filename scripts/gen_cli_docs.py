"""Rewrite docs/cli.md from the command's own parser: python scripts/gen_cli_docs.py"""

from pathlib import Path

from knnbe_qdrant.cli._reference import reference_markdown

target = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
target.write_text(reference_markdown() + "\n", encoding="utf-8")
print(f"wrote {target}")
