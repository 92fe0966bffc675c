"""The fenced code blocks of the docs, with the mark that says whether a test runs each.

A mark is an HTML comment on the line before a block (blank lines aside):

- ``<!-- runs -->``: ``tests/docs/test_examples.py`` runs this shell block;
- ``<!-- needs: WHAT (why) -->``: the block needs something a test does not
  start (``WHAT`` is one of ``NEEDS``), so a person runs it.

Every shell block carries one of the two, so a new page's commands are never
run by surprise (a server that never returns, an install) nor left untried by
oversight. A ``python`` block runs unless it is marked ``needs:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SHELL = {"bash", "sh", "shell", "console"}
# What a marked block may need, and why a test leaves it to a person.
NEEDS = {
    "cluster": "a Dask cluster of several processes, or a scheduler address",
    "server": "a long-running server (the MLflow UI, a Prefect server with a scheduler, the local stack)",
    "install": "a fresh virtual environment and a package index",
    "remote": "other machines: Kubernetes, an object store, certificates, remote hosts",
    "minutes": "minutes of the whole machine: bench/ scripts (run under the CPU lock), the test suite",
}
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*(?:(?P<runs>runs)|needs:\s*(?P<what>[\w-]+)(?P<why>[^>]*?))\s*-->\s*$")


@dataclass
class Block:
    """One fenced block of a page: its language, text, first line and mark."""

    page: Path
    line: int
    lang: str
    text: str
    needs: str | None  # the WHAT of a ``needs:`` mark
    marked_runs: bool = False  # a ``runs`` mark

    @property
    def where(self) -> str:
        return f"{_name(self.page)}:{self.line}"

    @property
    def runs(self) -> bool:
        """A test runs it: a shell block marked ``runs``, or a python block not marked ``needs:``."""
        if self.lang in SHELL:
            return self.marked_runs
        return self.lang == "python" and self.needs is None


def _name(page: Path) -> str:
    """The page as messages name it: relative to the repository (a test's planted page: its file name)."""
    return page.relative_to(REPO).as_posix() if page.is_relative_to(REPO) else page.name


def pages() -> list[Path]:
    """Every page a reader meets: the README and the site's pages."""
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks in order; raises ``ValueError`` on a mark that precedes no block."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    mark: tuple[str, int] | None = None
    i = 0
    while i < len(lines):
        m = _MARK.match(lines[i])
        fence = _FENCE.match(lines[i])
        if m:
            mark = (m.group("what") or "", i + 1)  # "" is the `runs` mark
        elif fence:
            indent, body, start = len(fence.group("indent")), [], i + 1
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:])
                i += 1
            found.append(Block(page, start, fence.group("lang"), "\n".join(body) + "\n",
                               needs=mark[0] or None if mark else None, marked_runs=bool(mark) and not mark[0]))
            mark = None
        elif lines[i].strip() and mark is not None:
            raise ValueError(f"{_name(page)}:{mark[1]}: a mark must come right before "
                             f"a fenced block, but line {i + 1} is text")
        i += 1
    if mark is not None:
        raise ValueError(f"{_name(page)}:{mark[1]}: a mark at the end of the page marks nothing")
    return found


def mark_problems(page: Path) -> list[str]:
    """What is wrong with the page's marks: a shell block with none, an unknown need, a mark on a config block."""
    out = []
    for block in blocks(page):
        if block.needs is not None and block.needs not in NEEDS:
            out.append(f"{block.where}: unknown need {block.needs!r}; known: {sorted(NEEDS)}")
        if (block.needs is not None or block.marked_runs) and block.lang != "python" and block.lang not in SHELL:
            out.append(f"{block.where}: a mark on a {block.lang or 'plain'} block, which no test runs anyway")
        if block.lang in SHELL and not block.runs and block.needs is None:
            out.append(f"{block.where}: say whether a test runs this block: '<!-- runs -->' on the line before "
                       f"it, or '<!-- needs: WHAT (why) -->' with WHAT one of {sorted(NEEDS)}")
        if block.lang == "":
            out.append(f"{block.where}: a fenced block without a language; say bash, python, text, toml or yaml")
    return out
