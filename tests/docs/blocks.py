"""The fenced code blocks of the docs, with the mark that says what each needs.

A block is preceded (blank lines aside) by an optional HTML comment
``<!-- needs: WHAT (why) -->``. ``tests/docs/test_examples.py`` runs every
``python`` and shell block that has no such mark, page by page, in order; a
marked block needs something a test does not start (see ``NEEDS``).
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
_MARK = re.compile(r"^\s*<!--\s*needs:\s*(?P<what>[\w-]+)(?P<why>[^>]*)-->\s*$")


@dataclass
class Block:
    """One fenced block of a page: its language, text, first line and ``needs:`` mark (or None)."""

    page: Path
    line: int
    lang: str
    text: str
    needs: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def runs(self) -> bool:
        """A python or shell block with no ``needs:`` mark: a test runs it."""
        return self.needs is None and (self.lang == "python" or self.lang in SHELL)


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
            mark = (m.group("what"), i + 1)
        elif fence:
            indent, body, start = len(fence.group("indent")), [], i + 1
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:])
                i += 1
            found.append(Block(page, start, fence.group("lang"), "\n".join(body) + "\n", mark and mark[0]))
            mark = None
        elif lines[i].strip() and mark is not None:
            raise ValueError(f"{page.relative_to(REPO)}:{mark[1]}: a 'needs:' mark must come right before "
                             f"a fenced block, but line {i + 1} is text")
        i += 1
    if mark is not None:
        raise ValueError(f"{page.relative_to(REPO)}:{mark[1]}: a 'needs:' mark at the end of the page marks nothing")
    return found
