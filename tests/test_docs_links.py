"""Every relative link and image in README.md and docs/ points at a file that exists (a moved page or figure
breaks the build of the documentation, so it breaks this test first)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links inside code blocks are examples
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        yield target.split("#", 1)[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_link_check_finds_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("see [x](missing.md) and ![y](img/a.png) and [ok](p.md) and [web](https://example.org)\n")
    assert sorted(relative_links(page)) == ["img/a.png", "missing.md", "p.md"]
