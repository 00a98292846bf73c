"""The package's layout rules, checked on the source (no imports of ivx, no model: well under a second).

Module ≤ 400 lines, function ≤ 60 lines, no import cycle among ivx modules (function-local imports
counted, `if TYPE_CHECKING:` blocks not: they never run), no `import ivx` inside the package, each
subpackage's `__init__` says what it owns and what it may import, and the import-linter layers
contract in pyproject.toml names every subpackage. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # import-linter brings tomli on 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PKG = SRC / "ivx"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
ROOT_FILES = ("__init__.py", "__main__.py")  # the package's own entry points


@dataclass(frozen=True)
class Import:
    """One ivx → ivx import statement, resolved to the module it loads."""

    source: str  # dotted module that imports
    target: str  # dotted ivx module imported
    line: int
    text: str


def _name(path: Path) -> str:
    """`src/ivx/engine/loop.py` → `ivx.engine.loop`; a package's `__init__.py` → the package."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _fail_if(problems: list[str], header: str) -> None:
    """Fail with every offender listed under one header (no assert-rewrite noise)."""
    if problems:
        pytest.fail(f"{header}\n" + "\n".join(problems), pytrace=False)


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """Ids of every node under an `if TYPE_CHECKING:` (annotation-only imports)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING"):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))  # `else:` runs
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """Every ivx import that runs (module level or inside a function), resolved to a module on disk."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            # `from ivx.engine import loop` loads the module ivx.engine.loop
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                yield Import(name, target, node.lineno, ast.unparse(node))


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def _shortest_loop(start: str, members: set[str], edges: dict[str, dict[str, Import]]) -> list[Import]:
    """The shortest chain of imports from `start` back to itself inside one cycle."""
    paths: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target, imp in sorted(edges[node].items()):
                if target == start:
                    return paths[node] + [imp]
                if target in members and target not in paths:
                    paths[target] = paths[node] + [imp]
                    nxt.append(target)
        frontier = nxt
    return []


def _graph() -> tuple[dict[str, Path], dict[str, dict[str, Import]]]:
    modules = _modules()
    edges: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for name, path in modules.items():
        for imp in _imports(name, path, modules):
            edges[name].setdefault(imp.target, imp)
    return modules, edges


def _contract() -> list[list[str]]:
    """The import-linter layers, top first; each item lists the independent layers on that level."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = [c for c in config["contracts"] if c["type"] == "layers"]
    assert len(layers) == 1, "pyproject.toml: expected one import-linter `layers` contract"
    return [[part.strip() for part in level.split("|")] for level in layers[0]["layers"]]


def test_no_module_over_400_lines() -> None:
    long = [
        f"  {_rel(p)}: {n} lines"
        for p in _modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    _fail_if(long, f"{len(long)} module(s) over {MAX_MODULE_LINES} lines; split by noun (STYLE.md, Layout):")


def test_no_function_over_60_lines() -> None:
    """Counted from the `def` line to the function's last line (docstring included, decorators not)."""
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"  {_rel(path)}:{node.lineno}  {node.name}: {n} lines")
    _fail_if(long, f"{len(long)} function(s) over {MAX_FUNCTION_LINES} lines; split them into named steps:")


def test_no_import_cycles_counting_function_local_imports() -> None:
    modules, edges = _graph()
    assert len(modules) > 50 and sum(map(len, edges.values())) > 100  # the scan itself found the package
    report = []
    for members in _cycles(edges):
        loop = _shortest_loop(members[0], set(members), edges)
        steps = "\n".join(f"    {_rel(modules[i.source])}:{i.line}  {i.text}" for i in loop)
        report.append(f"  a cycle of {len(members)} modules: {', '.join(members)}\n  for example:\n{steps}")
    _fail_if(
        report,
        "import cycles among ivx modules (imports inside functions count; move the code that needs "
        "the upper module up a layer, or pass it in):",
    )


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path: Path) -> None:
    a = Import("ivx.a", "ivx.b", 3, "from ivx import b")
    b = Import("ivx.b", "ivx.a", 9, "from ivx import a")
    edges = {"ivx.a": {"ivx.b": a}, "ivx.b": {"ivx.a": b}, "ivx.c": {"ivx.a": a}}
    assert _cycles(edges) == [["ivx.a", "ivx.b"]]
    assert _shortest_loop("ivx.a", {"ivx.a", "ivx.b"}, edges) == [a, b]
    # the scanner: a function-local import counts, a TYPE_CHECKING one does not
    pkg = tmp_path / "ivx"
    pkg.mkdir()
    (pkg / "b.py").write_text("")
    src = (
        "import typing\nif typing.TYPE_CHECKING:\n    import ivx.c\nelse:\n    pass\n"
        "def f():\n    from . import b\n"
    )
    (pkg / "a.py").write_text(src)
    (pkg / "c.py").write_text("")
    mods = {"ivx.a": pkg / "a.py", "ivx.b": pkg / "b.py", "ivx.c": pkg / "c.py"}
    assert [i.target for i in _imports("ivx.a", pkg / "a.py", mods)] == ["ivx.b"]


def test_no_import_of_the_ivx_package_inside_it() -> None:
    """`import ivx` / `from ivx import …` runs ivx/__init__ from inside the package: a hidden edge."""
    found = []
    for name, path in _modules().items():
        if path.parent == PKG and path.name in ROOT_FILES:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            bare = isinstance(node, ast.Import) and any(a.name == "ivx" for a in node.names)
            from_root = isinstance(node, ast.ImportFrom) and (
                (node.level == 0 and node.module == "ivx")
                or (node.level and node.level == name.count(".") + (path.name == "__init__.py"))
            )
            if bare or from_root:
                found.append(f"  {_rel(path)}:{node.lineno}  {ast.unparse(node)}")
    _fail_if(found, "import the module you use (`from ivx.results import rundir`), not the ivx package:")


def test_ivx_imports_are_at_the_top_of_the_file() -> None:
    """An ivx import inside a function hides an edge of the import graph (and a cycle with it);
    only the package's lazy exports (`ivx/__init__.py`: `ivx.run` imports `ivx.api` on first use,
    so importing any ivx module stays light) may import inside a function."""
    found = []
    for path in _modules().values():
        if path == PKG / "__init__.py":
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                relative = isinstance(node, ast.ImportFrom) and node.level > 0
                absolute = isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ivx"
                bare = isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ivx" for a in node.names)
                if relative or absolute or bare:
                    found.append(f"  {_rel(path)}:{node.lineno}  {ast.unparse(node)}")
    _fail_if(sorted(set(found)), "import ivx modules at the top of the file, not inside a function:")


def _layer_order() -> list[str]:
    """Contract layers bottom first, short names (`ivx.core` → `core`)."""
    return [name.removeprefix("ivx.") for level in reversed(_contract()) for name in level]


def _below(layer: str) -> set[str]:
    """The layers `layer` may import: every contract level under its own."""
    levels = [[n.removeprefix("ivx.") for n in level] for level in _contract()]
    at = next(i for i, level in enumerate(levels) if layer in level)
    return {n for level in levels[at + 1 :] for n in level}


def _may_import(text: str) -> set[str]:
    """Layer names in a "May import:" sentence; `a … b` means every contract layer from a down to b."""
    order = _layer_order()
    names = re.findall(r"[a-z]+|…", text)
    out: set[str] = set()
    for i, word in enumerate(names):
        if word == "…" and 0 < i < len(names) - 1 and {names[i - 1], names[i + 1]} <= set(order):
            hi, lo = order.index(names[i - 1]), order.index(names[i + 1])
            out.update(order[min(hi, lo) : max(hi, lo) + 1])
        elif word in order:
            out.add(word)
    return out


def _subpackages() -> list[Path]:
    return sorted(p.parent for p in PKG.glob("*/__init__.py"))


def test_every_subpackage_says_what_it_owns_and_what_it_may_import() -> None:
    problems = []
    for pkg in _subpackages():
        init = pkg / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        owns, _, may = doc.partition("May import:")
        if len(owns.split()) < 5:
            problems.append(f"  {_rel(init)}: the docstring does not say what {pkg.name} owns")
        if not _:
            problems.append(f'  {_rel(init)}: no "May import:" line (the layers below it, or "nothing")')
            continue
        said, allowed = _may_import(may), _below(pkg.name) if pkg.name in _layer_order() else set()
        if said - allowed:
            problems.append(
                f"  {_rel(init)}: says it may import {sorted(said - allowed)}, above it in the contract"
            )
        # `toy` sits beside `core`: naming it is optional
        if allowed - said - {"toy"}:
            problems.append(f"  {_rel(init)}: May import omits {sorted(allowed - said - {'toy'})}")
    _fail_if(problems, "subpackage docstrings (two lines: what it owns; May import: …):")


def test_the_layers_contract_names_every_subpackage_and_top_level_module() -> None:
    in_contract = {name for level in _contract() for name in level}
    on_disk = {f"ivx.{p.name}" for p in _subpackages()} | {
        f"ivx.{p.stem}" for p in PKG.glob("*.py") if p.name not in ROOT_FILES
    }
    missing, gone = sorted(on_disk - in_contract), sorted(in_contract - on_disk)
    assert not missing, f"pyproject.toml [tool.importlinter] layers: add {missing} (no layer, no rule)"
    assert not gone, f"pyproject.toml [tool.importlinter] layers name {gone}, which are not in src/ivx"
    top, bottom = _contract()[0], _contract()[-1]
    assert top == ["ivx.cli"] and "ivx.core" in bottom, "cli on top, core at the bottom"


def test_the_docstring_reader_expands_ranges() -> None:
    assert _may_import("every layer (api, recipes … core).") == set(_layer_order()) - {"cli"}
    assert _may_import("nothing (no other ivx layer).") == set()
    assert _may_import("plan, model, store, config, core.") == {"plan", "model", "store", "config", "core"}


def test_the_architecture_doc_covers_every_layer_and_names_only_modules_that_exist() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    layers = [name.removeprefix("ivx.") for level in _contract() for name in level]
    missing = [layer for layer in layers if f"**{layer}**" not in doc]
    _fail_if([f"  {layer}" for layer in missing], "docs/architecture.md: no paragraph for these layers:")
    packages = [p.name for p in _subpackages()]
    named = set(re.findall(rf"(?<!tests/)\b({'|'.join(packages)})/([a-z_]+)(?:\.py)?\b", doc))
    gone = sorted(f"  {pkg}/{mod}" for pkg, mod in named if not (PKG / pkg / f"{mod}.py").is_file())
    assert len(named) > 20  # the doc names real modules (the check itself works)
    _fail_if(gone, "docs/architecture.md names modules that are not in src/ivx:")
