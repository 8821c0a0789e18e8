"""The house keeps its shape: few modules at the top, none too long, no hidden caches, no cycles.

Issue 21's structural rules, checked on the source (no imports of the package needed):

- at most 10 modules directly under ``advisor/``: the rest live in the package of their room;
- no module over 800 lines;
- no module-level mutable cache: a dict, list or set at module level that the module writes
  into, or a module-level function memoised with ``functools.cache``/``lru_cache``, unless it
  is listed below with the reason it cannot go stale;
- no import cycle between modules, lazy (function-level) imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "advisor"
MAX_TOP_MODULES = 10
MAX_LINES = 800

# Module-level state that is not a cache of derived figures, or that is keyed by everything
# it depends on. (module, name) -> why it may stay.
ALLOWED_STATE = {
    ("advisor.notes", "_pending"): "a queue of messages for the user, emptied when printed",
    ("advisor.data.yamlio", "_loaders"): "builds the two YAML loader classes once; no data",
    ("advisor.data.cache", "code_digest"): "the digest of the package's own source files",
}
_MUTATORS = {
    "append", "add", "update", "setdefault", "pop", "popitem", "clear", "extend", "insert",
    "remove", "discard", "__setitem__",
}  # fmt: skip
_CONTAINERS = {"dict", "list", "set", "defaultdict", "OrderedDict", "WeakValueDictionary"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_container(node: ast.expr | None) -> bool:
    if isinstance(node, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in _CONTAINERS
    return False


def _module_caches(tree: ast.Module) -> set[str]:
    """Module-level containers the module writes into, and memoised module-level functions."""
    containers: set[str] = set()
    memoised: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and _is_container(node.value):
            containers |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and _is_container(node.value):
            if isinstance(node.target, ast.Name):
                containers.add(node.target.id)
        elif isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                name = target.attr if isinstance(target, ast.Attribute) else ""
                name = name or getattr(target, "id", "")
                if name in {"cache", "lru_cache"}:
                    memoised.add(node.name)
    written: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            target: ast.expr = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value if node.func.attr in _MUTATORS else node
        else:
            continue
        if isinstance(target, ast.Name):
            written.add(target.id)
    return (containers & written) | memoised


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {m for m in out if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_at_most_ten_modules_at_the_top() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_no_module_is_over_800_lines() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long


def test_no_module_level_mutable_caches() -> None:
    found = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for cache in sorted(_module_caches(tree)):
            if (name, cache) not in ALLOWED_STATE:
                found.append(f"{name}.{cache}")
    assert not found, found


def test_the_checker_finds_a_planted_cache() -> None:
    planted = ast.parse("_SEEN: dict[int, int] = {}\ndef f(x):\n    _SEEN[id(x)] = 1\n")
    assert _module_caches(planted) == {"_SEEN"}
    memo = ast.parse("import functools\n@functools.lru_cache(maxsize=8)\ndef g(x):\n    return x\n")
    assert _module_caches(memo) == {"g"}
    constant = ast.parse("TABLE = {'a': 1}\ndef h():\n    return TABLE['a']\n")
    assert _module_caches(constant) == set()


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert not _cycles(graph), _cycles(graph)


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
