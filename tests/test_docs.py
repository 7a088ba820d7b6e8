"""The documentation cannot drift from the code: the CLI reference is generated from the parser, the architecture
page names every module, the README stays a front door, and the pages it links to exist."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import knnbe_qdrant
from knnbe_qdrant.cli._reference import reference_markdown

ROOT = Path(knnbe_qdrant.__file__).parent.parent
DOCS = ROOT / "docs"


def _generated_with() -> str:
    match = re.search(r"argparse of Python (\d+\.\d+)", (DOCS / "cli.md").read_text(encoding="utf-8"))
    assert match, "docs/cli.md does not say which Python generated it"
    return match.group(1)


def test_the_cli_reference_is_current():
    # argparse's layout changes between Python versions; the reference is compared on the version that wrote it.
    if _generated_with() != f"{sys.version_info.major}.{sys.version_info.minor}":
        pytest.skip(f"docs/cli.md was generated with Python {_generated_with()}")
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == reference_markdown() + "\n", (
        "docs/cli.md is stale: run python scripts/gen_cli_docs.py")


def test_the_architecture_page_names_every_module():
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    package = Path(knnbe_qdrant.__file__).parent
    missing = []
    for path in package.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if path.name not in page and path.stem not in page:
            missing.append(str(path.relative_to(package)))
    folders = (p for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    missing += [f"{folder.name}/" for folder in folders if f"{folder.name}/" not in page]
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_the_readme_is_a_front_door_whose_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 10 * 1024, "README.md is over 10 KB: move detail to docs/"
    for page in (ROOT / "README.md", ROOT / "CONTRIBUTING.md", *DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
