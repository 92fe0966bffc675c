"""The picture of the layers on ``docs/design.md``, generated from the code.

It reads what ``tests/layout/test_layers.py`` knows (each package's layer and
rank, which third-party packages each layer alone may import) and the real
import graph, so the picture cannot drift from the code:
``tests/docs/test_design.py`` fails when the page's copy differs, and

    .venv/bin/python -m tests.docs.diagram --write

rewrites it between the page's ``layers:begin`` and ``layers:end`` marks.
"""

from __future__ import annotations

import sys
import textwrap
from collections import defaultdict

from tests.docs.blocks import DOCS
from tests.layout import test_layers as layout

PAGE = DOCS / "design.md"
BEGIN, END = "<!-- layers:begin (generated: python -m tests.docs.diagram --write) -->", "<!-- layers:end -->"
WIDTH = 100


def _folder(package: str) -> str:
    for name, root in sorted(layout.ROOTS.items(), key=lambda kv: -len(kv[0])):
        if package == name or package.startswith(name + "."):
            path = root.joinpath(*package[len(name):].lstrip(".").split(".")) if package != name else root
            rel = path.relative_to(layout.REPO).as_posix()
            return rel + "/" if path.is_dir() else rel + ".py"
    raise KeyError(package)


def layers() -> list[tuple[int, str, list[str]]]:
    """``(rank, layer, packages)`` from the top layer down; the core lists its top-level modules."""
    grouped: dict[tuple[int, str], list[str]] = defaultdict(list)
    for package, (name, rank) in layout.LAYERS.items():
        grouped[(rank, name)].append(package)
    inside: dict[str, set[str]] = defaultdict(set)  # top-level core name -> its modules, for a package
    for m in layout.modules():
        if layout.layer(m) == "core" and m.count(".") >= 1:
            parts = m.split(".")
            inside[parts[1]].update(parts[2:3])
    grouped[(layout.CORE, "core")] = [f"{name}/ ({', '.join(sorted(mods))})" if mods else name
                                      for name, mods in inside.items()]
    return [(rank, name, sorted(pkgs)) for (rank, name), pkgs in sorted(grouped.items(), key=lambda kv: (-kv[0][0], kv[0][1]))]


def uses() -> dict[str, set[str]]:
    """For each layer, the other layers its modules really import (the import graph, not the rules)."""
    edges, _, _ = layout.graph()
    out: dict[str, set[str]] = defaultdict(set)
    for module, targets in edges.items():
        for target in targets:
            if layout.layer(target) != layout.layer(module):
                out[layout.layer(module)].add(layout.layer(target))
    return out


def owned() -> dict[str, list[str]]:
    """For each layer, the third-party packages that only it (and its peers named in OWNED) may import."""
    out: dict[str, list[str]] = defaultdict(list)
    for top, owners in layout.OWNED.items():
        for owner in owners if isinstance(owners, tuple) else (owners,):
            out[layout.layer(owner)].append(top)
    return out


def render() -> str:
    """The picture: one box per rank, top to bottom; an arrow means 'imports'."""
    ranks = {name: rank for rank, name, _ in layers()}
    used, third = uses(), owned()
    lines = ["imports point down; layers of one rank never import each other;",
             "dask, mlflow, optuna and prefect are imported only where a layer lists them", ""]
    previous = None
    for rank, name, packages in layers():
        if previous is not None and rank != previous:
            lines += ["        │", "        ▼"]
        if name == "core":
            body = "nnpipe/ " + ", ".join(packages)
        else:
            body = ", ".join(f"{p} ({_folder(p)})" if p != "nnpipe" else "nnpipe (nnpipe/__init__.py)"
                             for p in packages)
        head = f"[{rank}] {name:<12}"
        for i, chunk in enumerate(textwrap.wrap(body, WIDTH - len(head) - 1)):
            lines.append((head if i == 0 else " " * len(head)) + " " + chunk)
        extra = []
        if third.get(name):
            extra.append("third party: " + ", ".join(sorted(third[name])))
        below = sorted(used.get(name, ()), key=lambda n: (-ranks[n], n))
        if below:
            extra.append("imports from: " + ", ".join(below))
        if extra:
            lines.append(" " * (len(head) + 1) + "; ".join(extra))
        previous = rank
    return "\n".join(lines) + "\n"


def block() -> str:
    return f"{BEGIN}\n```text\n{render()}```\n{END}"


def on_page() -> str:
    text = PAGE.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def write() -> None:
    text = PAGE.read_text()
    PAGE.write_text(text.replace(on_page(), block()))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    print(render(), end="")
