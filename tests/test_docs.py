"""README.md and docs/*.md tell the truth about the files they show and the pages they link.

- A fenced block right after a line `<!-- copy of PATH -->` is a copy of the file PATH (from the
  repository's root) and must equal it exactly: the configs the docs show are the ones the tests
  run, and a drift fails here. The configs in QUOTED must be shown that way.
- Every relative link points to a file that exists, and a `#anchor` to a heading of its page.
- The README stays a short front page; the details live under docs/.

No container, no runtime: plain file reads (the fast lane).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 150

# The files the tests run that the docs quote: each must appear as a marked copy.
QUOTED = ("docs/container_kernel_config.py", "tests/hub/jupyterhub_config.py")

COPY_MARKER = re.compile(r"<!--\s*copy of\s+(\S+)\s*-->")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+).*?\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    copy_of: str | None  # the marker's PATH


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    prose: list[tuple[int, str]] = field(default_factory=list)  # lines outside fences
    stray_markers: list[int] = field(default_factory=list)  # a marker not followed by a fence


def parse(path: Path) -> Page:
    """Split a markdown page into fenced blocks (with their copy markers) and prose lines."""
    page = Page(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    marker: tuple[int, str] | None = None
    fence = ""
    body: list[str] = []
    start = 0
    for number, line in enumerate(lines, 1):
        if fence:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                text = "".join(f"{b}\n" for b in body)
                page.blocks.append(Block(start, text, marker[1] if marker else None))
                fence, marker = "", None
            else:
                body.append(line)
            continue
        opening = FENCE.match(line)
        if opening:
            fence, body, start = opening.group(1), [], number
            continue
        if marker:  # the marker's line was not followed by a fence
            page.stray_markers.append(marker[0])
            marker = None
        found = COPY_MARKER.fullmatch(line.strip())
        if found:
            marker = (number, found.group(1))
        page.prose.append((number, line))
    if marker:
        page.stray_markers.append(marker[0])
    return page


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as dashes."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Page) -> set[str]:
    """Every anchor of the page's headings, with GitHub's -1, -2 for repeated ones."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in page.prose:
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(f"{base}-{count}" if count else base)
    return found


def copy_problems(page: Page, root: Path) -> list[str]:
    """What is wrong with the page's marked copies, one line each."""
    name = page.path.relative_to(root)
    stray = "a copy marker with no fenced block after it"
    problems = [f"{name}:{number}: {stray}" for number in page.stray_markers]
    for block in page.blocks:
        if block.copy_of is None:
            continue
        source = root / block.copy_of
        if not source.is_file():
            problems.append(f"{name}:{block.line}: copy of {block.copy_of}, which does not exist")
        elif block.text != source.read_text(encoding="utf-8"):
            problems.append(
                f"{name}:{block.line}: the block differs from {block.copy_of}; paste the file in"
            )
    return problems


def link_targets(page: Page) -> list[tuple[int, str]]:
    found = []
    for number, line in page.prose:
        prose = INLINE_CODE.sub("", line)
        found += [(number, target) for target in LINK.findall(prose)]
        definition = LINK_DEFINITION.match(prose)
        if definition:
            found.append((number, definition.group(1)))
    return found


def link_problems(page: Page, root: Path) -> list[str]:
    """Relative links that point to no file, or to no heading of their page."""
    name = page.path.relative_to(root)
    problems = []
    for number, target in link_targets(page):
        if SCHEME.match(target):
            continue  # https:, mailto:: not ours to check
        path, _, anchor = target.partition("#")
        where = f"{name}:{number}: {target}"
        if not path:
            linked = page.path
        else:
            linked = (page.path.parent / path).resolve()
            if not linked.is_relative_to(root):
                problems.append(f"{where} leaves the repository")
                continue
            if not linked.exists():
                problems.append(f"{where} does not exist")
                continue
        if anchor and linked.suffix == ".md" and anchor not in anchors(parse(linked)):
            problems.append(f"{where}: no such heading in {linked.relative_to(root)}")
    return problems


def page_id(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_copies_equal_their_files(path):
    assert copy_problems(parse(path), REPO) == []


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_relative_links_reach_a_file_and_heading(path):
    assert link_problems(parse(path), REPO) == []


def test_the_configs_the_tests_run_are_shown_as_copies():
    """Each quoted config appears as a marked copy, and nowhere as an unmarked one (which could
    drift unseen): an unmarked block that opens as the file does is a copy without its marker."""
    blocks = [(path, block) for path in PAGES for block in parse(path).blocks]
    copied = {block.copy_of for _, block in blocks}
    assert [quoted for quoted in QUOTED if quoted not in copied] == []
    openings = {(REPO / q).read_text(encoding="utf-8").splitlines()[0]: q for q in QUOTED}
    unmarked = [
        f"{page_id(path)}:{block.line}: looks like {openings[block.text.splitlines()[0]]}"
        for path, block in blocks
        if block.copy_of is None and block.text and block.text.splitlines()[0] in openings
    ]
    assert unmarked == []


def test_readme_is_a_short_front_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, "README.md is the front page: move details to docs/"


def test_a_drifted_copy_and_a_broken_link_are_caught(tmp_path):
    """The checks themselves: a copy that differs, a missing file, a missing heading."""
    (tmp_path / "config.py").write_text("c = get_config()\nc.A.b = 1\n")
    (tmp_path / "page.md").write_text(
        "# A page\n\n## The `%%container` magic: one cell\n\n"
        "<!-- copy of config.py -->\n```python\nc = get_config()\nc.A.b = 2\n```\n\n"
        "<!-- copy of config.py -->\n```python\nc = get_config()\nc.A.b = 1\n```\n\n"
        "<!-- copy of config.py -->\ntext, not a fence\n\n"
        "[ok](#the-container-magic-one-cell) [ok](config.py) [web](https://example.org/x)\n"
        "[gone](missing.md) [no heading](page.md#nowhere) `[code](not-a-link.md)`\n"
        "```\n[in a block](not-a-link-either.md)\n# not a heading\n```\n"
    )
    page = parse(tmp_path / "page.md")
    assert copy_problems(page, tmp_path) == [
        "page.md:17: a copy marker with no fenced block after it",
        "page.md:6: the block differs from config.py; paste the file in",
    ]
    assert link_problems(page, tmp_path) == [
        "page.md:21: missing.md does not exist",
        "page.md:21: page.md#nowhere: no such heading in page.md",
    ]
    assert anchors(page) == {"a-page", "the-container-magic-one-cell"}
