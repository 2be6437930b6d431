"""The documents a user reads: the README stays a newcomer's page whose test command is CI's, and no link between
the documents points nowhere."""

from __future__ import annotations

import re

import pytest

from .conftest import REPO

DOCS = ["README.md", "docs/GUIDE.md", "ARCHITECTURE.md", "BENCHMARKS.md"]


def test_the_readme_is_a_newcomers_page_that_starts_with_the_two_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    commands = [line for line in lines if line.startswith("python3.11 -m venv .venv")]
    assert len(commands) == 2 and lines.index(commands[0]) < 20 and lines.index(commands[1]) < 30
    assert "transferlab train data/presidents" in commands[0]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci  # CI runs exactly the README's test command


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_between_the_documents_resolves(doc):
    path = REPO / doc
    text = path.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
            continue
        if anchor and dest.suffix == ".md":
            headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), flags=re.M)}
            if anchor not in headings:
                broken.append(target)
    assert broken == []
