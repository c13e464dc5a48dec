"""The package's layers point one way: data -> nn / diffusion / text -> models / augment -> train / eval /
retrieval -> serve -> cli / demo (``docs/architecture.md``).

Every ``import`` in ``src/dreamrec`` (at module level or inside a function, except under ``TYPE_CHECKING``)
is read with ``ast``: a module may import its own layer and the layers below it, never one above; no
module imports a private (``_name``) helper of another package; and neither the packages nor the modules
import each other in a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dreamrec"

# rank of each top-level package or module of dreamrec ("" = the package root: __version__)
LAYERS: dict[str, int] = {
    "": 0, "errors": 0, "config": 0, "atomic": 0, "threads": 0, "keyed_noise": 0,
    "data": 1,
    "nn": 2, "diffusion": 2, "text": 2,
    "models": 3, "augment": 3,
    "train": 4, "eval": 4, "retrieval": 4,
    "serve": 5,
    "cli": 6, "demo": 6, "bench": 6,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str) -> list[tuple[str, list[str], int]]:
    """(imported dreamrec module, imported names, line) of every import outside TYPE_CHECKING blocks."""
    out: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "dreamrec")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = module.split(".")[: len(module.split(".")) - node.level + (1 if _is_pkg(module) else 0)]
                base = ".".join(pkg + ([base] if base else []))
            if base.split(".")[0] == "dreamrec":
                out.append((base, [a.name for a in node.names], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _is_pkg(module: str) -> bool:
    return (SRC.parent / Path(*module.split(".")) / "__init__.py").exists()


def _graph() -> dict[str, list[tuple[str, list[str], int]]]:
    graph = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        graph[module] = _imports(ast.parse(path.read_text(), str(path)), module)
    return graph


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = dfs(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(edges):
        if v not in state:
            found = dfs(v)
            if found:
                return found
    return None


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in _graph()}
    assert packages <= set(LAYERS), f"give these a layer in LAYERS: {sorted(packages - set(LAYERS))}"


def test_no_upward_import() -> None:
    bad = []
    for module, imports in _graph().items():
        here = LAYERS[_package(module)]
        for target, _, line in imports:
            there = LAYERS[_package(target)]
            if there > here:
                bad.append(f"{module}:{line} imports {target} ({_package(module) or 'root'} is below "
                           f"{_package(target)})")
    assert not bad, "\n".join(bad)


def test_no_private_helper_crosses_a_package() -> None:
    bad = []
    for module, imports in _graph().items():
        for target, names, line in imports:
            if _package(target) != _package(module):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    bad.append(f"{module}:{line} imports {private} from {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = _graph()
    modules = set(graph)
    module_edges: dict[str, set[str]] = {}
    package_edges: dict[str, set[str]] = {}
    for module, imports in graph.items():
        for target, names, _ in imports:
            # "from dreamrec.x import y" imports module dreamrec.x.y when y is a module
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules] or [target]
            for t in targets:
                if t in modules and t != module and not module.startswith(t + "."):  # a package's __init__ aside
                    module_edges.setdefault(module, set()).add(t)
            a, b = _package(module), _package(target)
            if a != b:
                package_edges.setdefault(a, set()).add(b)
    assert _cycle(package_edges) is None, f"packages import each other: {_cycle(package_edges)}"
    # a package's __init__ re-exporting its modules is not a cycle of its modules
    inner = {m: {t for t in ts if not _is_pkg(t)} for m, ts in module_edges.items() if not _is_pkg(m)}
    assert _cycle(inner) is None, f"modules import each other: {_cycle(inner)}"


def test_the_checks_catch_a_violation() -> None:
    """The reader sees imports inside functions, and the cycle finder finds a two-module cycle."""
    tree = ast.parse("def f():\n    from dreamrec.serve import Recommender\n")
    assert _imports(tree, "dreamrec.models.x") == [("dreamrec.serve", ["Recommender"], 2)]
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
