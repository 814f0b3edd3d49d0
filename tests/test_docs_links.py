"""The docs hold together: every relative link in README.md, results/README.md and docs/*.md points
at a file or folder that exists, and the README stays short (the detail lives in docs/)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 160

# [text](target) and [text](target "title"); images too. Inline code and fenced blocks are dropped
# first, so a link-like string quoted as code is not taken for a link.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
EXTERNAL = ("http://", "https://", "mailto:")


def relative_links(page: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = []
    for target in LINK.findall(text):
        if target.lower().startswith(EXTERNAL) or target.startswith("#"):
            continue
        target = target.split("#", 1)[0]
        if target:
            targets.append(target)
    return targets


def test_the_pages_exist():
    assert (ROOT / "docs").is_dir()
    for page in PAGES:
        assert page.is_file(), page


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files: {missing}"


def test_the_link_finder_sees_links_but_not_code(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("[a](docs/a.md) [b](b.md#part) [c](#anchor) [d](https://example.org) ![e](img.png \"t\")\n"
                    "`[f](not/a/link.md)`\n```\n[g](nor/this.md)\n```\n[h](mailto:someone@example.org)\n")
    assert relative_links(page) == ["docs/a.md", "b.md", "img.png"]


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
