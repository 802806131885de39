"""The README and docs/ hold together: every relative link resolves, to a file and, with an anchor, to a heading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from repo import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "data" / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), outside code spans; targets with a scheme (https:, mailto:) are external.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` that point at nothing."""
    problems = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{target}: {destination} does not exist")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination.read_text("utf-8")):
            problems.append(f"{target}: no heading #{anchor} in {destination.name}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(doc):
    assert doc.is_file()
    assert broken_links(doc) == []


def test_the_link_check_catches_broken_links(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page.write_text(
        "# Page\n[ok](other.md#a-section) [self](#page) [gone](missing.md) [bad anchor](other.md#nope)\n"
        "`[in code](nowhere.md)` [web](https://example.com)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        f"missing.md: {tmp_path / 'missing.md'} does not exist",
        "other.md#nope: no heading #nope in other.md",
    ]


def test_the_readme_is_a_front_door():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, len(lines)
