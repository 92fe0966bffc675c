"""The docs site builds strictly, and every example on it is either run by a test or marked.

No server or cluster: this file is in the quick tier. The examples themselves
run in ``test_examples.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.docs.blocks import REPO, blocks, mark_problems, pages

README_MAX_LINES = 250


def test_site_builds_strictly(tmp_path: Path):
    """`mkdocs build --strict`: a broken link or anchor, a missing page or one left out of the nav fails.

    Never with --quiet: it silences the warnings that strict mode counts, and then nothing fails.
    """
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    built = {p.relative_to(tmp_path / "site").parent.as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {".", "cli", "design", "benchmarks"} <= built, sorted(built)
    # Markdown that GitHub renders but Python-Markdown leaves as text: a list with no blank line
    # before it, a fence inside a list item. Outside <pre>, no line of a page starts with either.
    for page in (tmp_path / "site").rglob("index.html"):
        text = re.sub(r"<pre.*?</pre>", "", page.read_text(), flags=re.S)
        raw = [line for line in text.splitlines() if re.match(r"\s*(- |\* |```)", line)]
        assert not raw, f"{page.relative_to(tmp_path / 'site')}: unrendered Markdown: {raw[:3]}"


def test_strict_build_fails_on_a_broken_link(tmp_path: Path):
    """The check can fail: the same site with one link to a page that is not there does not build."""
    docs = tmp_path / "docs"
    subprocess.run(["cp", "-r", str(REPO / "docs"), str(docs)], check=True)
    (docs / "cli.md").write_text((docs / "cli.md").read_text() + "\nSee [the moon](moon.md).\n")
    config = (REPO / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    (tmp_path / "mkdocs.yml").write_text(config)
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--config-file", str(tmp_path / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "moon.md" in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_shell_block_is_run_or_marked(page: Path):
    """A shell block says `runs` (test_examples.py runs it) or what it needs, from a known list."""
    problems = mark_problems(page)
    assert not problems, "\n".join(problems)


def test_the_mark_check_fails_on_an_unmarked_or_wrongly_marked_block(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nnnpipe serve m\n```\n\n<!-- needs: moon -->\n```bash\nls\n```\n\n"
                    "<!-- runs -->\n```toml\na = 1\n```\n\n<!-- runs -->\n```bash\nls\n```\n")
    found = mark_problems(page)
    assert len(found) == 3, found
    assert "page.md:1: say whether" in found[0] and "unknown need 'moon'" in found[1] and "toml" in found[2]
    page.write_text("<!-- runs -->\nsome text\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="must come right before a fenced block"):
        mark_problems(page)


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_config_blocks_parse(page: Path):
    """TOML and YAML examples are what a reader pastes into a file: they must at least parse."""
    for block in blocks(page):
        try:
            if block.lang == "toml":
                tomllib.loads(block.text)
            elif block.lang == "yaml":
                yaml.safe_load(block.text)
        except Exception as e:  # noqa: BLE001 - any parse error is the failure
            pytest.fail(f"{block.where}: {block.lang} block does not parse: {e}")


def test_readme_is_a_front_door():
    """The README stays short, starts with the two commands, and links only to pages that exist."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    first = next(b for b in blocks(REPO / "README.md"))
    assert first.text.splitlines() == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/nnpipe train",
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/pytest",
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert first.text.splitlines()[1] in ci, "the README's test command is what .ci/run runs"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).is_file(), f"README.md links to {target}, which is not there"


_PATH = re.compile(r"(?<![\w/.~$@:-])((?:nnpipe|flows|deploy|bench|tests|docs|\.ci)/[\w./-]*[\w/])")


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_paths_named_on_a_page_exist(page: Path):
    """A file or folder of the repository that a page names is there (modules move; the docs follow)."""
    missing = sorted({m.group(1) for m in _PATH.finditer(page.read_text()) if not (REPO / m.group(1)).exists()})
    assert not missing, f"{page.relative_to(REPO)} names paths that are not in the repository: {missing}"
