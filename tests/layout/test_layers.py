"""The import graph: layers point downward only and nothing imports in a circle.

Read from the source with ``ast`` (lazy imports inside functions count too, since
they run sooner or later), so the test needs no optional service and no cluster.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Where each installed package's source lives (pyproject's package-dir).
ROOTS = {"nnpipe": REPO / "nnpipe", "nnpipe.flows": REPO / "flows", "nnpipe.deploy": REPO / "deploy"}

# Each module prefix belongs to a layer (name, rank). A module may import its
# own layer or lower ranks; layers of equal rank (distributed and tracking)
# must not import each other.
CORE = 0
LAYERS: dict[str, tuple[str, int]] = {
    "nnpipe.distributed": ("distributed", 1),
    "nnpipe.tracking": ("tracking", 1),
    # The public front: nnpipe.train runs the core loop or the distributed
    # loops, Sequential.fit trains through it, and the package exports both.
    "nnpipe.api": ("front", 2),
    "nnpipe.keras": ("front", 2),
    "nnpipe": ("front", 2),
    "nnpipe.tuning": ("tuning", 3),
    "nnpipe.flows": ("flows", 4),
    "nnpipe.deploy": ("deploy", 5),
    # the model server: above tracking, beside the CLI and the deployments; no prefect, no dask
    "nnpipe.serve": ("serve", 5),
    "nnpipe.cli": ("cli", 6),
}
# Third-party packages each layer alone may import.
OWNED = {"dask": "nnpipe.distributed", "distributed": "nnpipe.distributed", "mlflow": "nnpipe.tracking",
         "optuna": "nnpipe.tuning", "prefect": ("nnpipe.flows", "nnpipe.deploy", "nnpipe.cli")}


def modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "nnpipe" and parts and parts[0] in ("flows", "deploy"):
                continue
            found[name] = path
    return found


def _prefix(module: str) -> str:
    """The longest LAYERS key the module equals or sits under ('' for the core)."""
    best = ""
    for key in LAYERS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    return "" if best == "nnpipe" and module != "nnpipe" else best


def layer(module: str) -> str:
    key = _prefix(module)
    return LAYERS[key][0] if key else "core"


def rank(module: str) -> int:
    key = _prefix(module)
    return LAYERS[key][1] if key else CORE


def imports(path: Path, module: str, known: set[str]) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of a project module or a third-party top name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in known else target, node.lineno))
    return out


def graph() -> tuple[dict[str, set[str]], list[str], list[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    upward, foreign = [], []
    for module, path in mods.items():
        for target, line in imports(path, module, known):
            top = target.split(".")[0]
            where = f"{path.relative_to(REPO)}:{line}"
            if target in known:
                edges[module].add(target)
                same = layer(module) == layer(target)
                if not same and rank(target) >= rank(module):
                    upward.append(f"{where}: {module} ({layer(module)}) imports {target} ({layer(target)})")
            elif top in OWNED:
                owners = OWNED[top] if isinstance(OWNED[top], tuple) else (OWNED[top],)
                if not any(module == o or module.startswith(o + ".") for o in owners):
                    foreign.append(f"{where}: {module} imports {target}, which only {owners} may import")
    return edges, upward, foreign


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_imports_point_downward_only():
    _, upward, _ = graph()
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_third_party_services_stay_in_their_layer():
    _, _, foreign = graph()
    assert not foreign, "\n".join(foreign)


def test_no_import_cycles():
    edges, _, _ = graph()
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def private_reach_ins(path: Path, module: str, known: set[str]) -> list[str]:
    """``from nnpipe.x import _name`` and ``x._name`` (``x`` a project module) in another module's code.

    A leading underscore means "only this module uses it"; a name another
    module needs is part of a seam and gets a public name. Dunders
    (``__version__``) are public by convention.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    aliases: dict[str, str] = {}  # local name -> project module it is bound to
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nnpipe" and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    aliases[alias.asname or alias.name] = sub
                elif private(alias.name) and node.module != module:
                    out.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in known:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name)
                and aliases.get(node.value.id, module) != module):
            out.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
    return out


def test_no_module_reaches_into_another_modules_private_names():
    mods = modules()
    found = [hit for module, path in mods.items() for hit in private_reach_ins(path, module, set(mods))]
    assert not found, "private names used across modules (give them a public name):\n" + "\n".join(found)


def test_the_private_check_sees_a_planted_reach_in(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    path = tmp_path / "nnpipe" / "x.py"
    path.parent.mkdir()
    path.write_text("from nnpipe.tracking.runs import _hidden\nfrom nnpipe import tracking\ntracking._secret()\n"
                    "from nnpipe.version import __version__\n")
    known = {"nnpipe.tracking", "nnpipe.tracking.runs", "nnpipe.version", "nnpipe.x"}
    hits = private_reach_ins(path, "nnpipe.x", known)
    assert [h.split(": ", 1)[1] for h in hits] == ["from nnpipe.tracking.runs import _hidden", "tracking._secret"]


def test_the_checker_sees_a_planted_upward_import_and_cycle():
    edges = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert cycles(edges) == [["a", "b"]]
    assert rank("nnpipe.core.training") < rank("nnpipe.distributed.pool") < rank("nnpipe.flows.pipeline")
    assert layer("nnpipe.cli.pipeline") == "cli" and layer("nnpipe.core.network") == "core"


def test_only_nnpipe_is_installed_at_the_top_level():
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "nnpipe" or p.startswith("nnpipe.") for p in setuptools["packages"]), setuptools["packages"]
    assert setuptools["package-dir"] == {"nnpipe.flows": "flows", "nnpipe.deploy": "deploy"}
    import nnpipe.deploy
    import nnpipe.flows

    assert Path(nnpipe.flows.__file__).parent == REPO / "flows"
    assert Path(nnpipe.deploy.__file__).parent == REPO / "deploy"


@pytest.mark.parametrize("name", ["flows", "deploy"])
def test_generic_top_level_names_are_not_importable_outside_the_repo(name, tmp_path, monkeypatch):
    import importlib.util
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != REPO])
    assert importlib.util.find_spec(name) is None


@pytest.mark.parametrize("package", ["nnpipe.core", "nnpipe.data", "nnpipe.sources", "nnpipe.tracking"])
def test_each_package_map_names_every_module(package):
    """A package's docstring is its map: every module in the folder is named there as :mod:`.name`."""
    import importlib

    folder = ROOTS["nnpipe"] / package.split(".", 1)[1]
    doc = importlib.import_module(package).__doc__ or ""
    missing = [p.stem for p in folder.glob("*.py") if p.stem != "__init__" and f":mod:`.{p.stem}`" not in doc]
    assert not missing, f"{package}'s docstring does not name {missing}"
