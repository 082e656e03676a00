"""The layout tells the architecture: no import cycle among drray, actors and jobs, and each part
imports only the parts below it (docs/design.md, Layout). Imports inside functions count too."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("drray", "actors", "jobs")

# Bottom to top. A module may import its own part and any part before it in this list.
LAYERS = [
    ("drray.errors", "drray.registry", "drray.io", "drray.seeds", "drray.config", "drray.storage"),
    ("drray.data",),
    ("drray.models",),
    ("drray.meta",),
    ("drray.train",),
    ("drray.curation",),
    ("drray.evaluation",),
    ("actors",),
    ("jobs",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports (a name imported from a package counts as the
    package unless it is a submodule)."""
    files = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). A package's __init__
    importing its own submodules (to register built-ins) is not a cycle."""
    graph = {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS (and to docs/design.md)")


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_each_part_imports_only_parts_below_it():
    upward = [f"{module} -> {target}" for module, targets in import_graph().items() for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert upward == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The checks themselves can fail: a hand-made cycle and an upward edge are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"p": {"p.sub"}, "p.sub": {"q"}, "q": set()}) == []
    assert layer_of("drray.data.splits") < layer_of("drray.meta.population") < layer_of("actors.scheduler")


def test_the_library_runs_without_ray():
    """drray/ is PyTorch, numpy and pyarrow: Ray plumbing lives in actors/."""
    uses_ray = [name for name, path in ((module_name(p), p) for p in (ROOT / "drray").rglob("*.py"))
                if any(isinstance(node, (ast.Import, ast.ImportFrom))
                       and any((alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0] == "ray"
                               for alias in node.names)
                       for node in ast.walk(ast.parse(path.read_text())))]
    assert uses_ray == []
