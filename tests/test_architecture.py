"""The house's walls, read off the source with ``ast``: no import circles under ``cp/``, every
import goes to the same or a lower floor, and the walls docs/architecture.md names hold (the
rule tables import nothing outside ``cp/scaling`` and no torch; training reaches neither
tracking nor the CLI; searchers reach no launcher; the model never sees the spec; a stage
imports only stages before it).

Imports inside ``if TYPE_CHECKING:`` are annotations, not imports: the stage modules name the
spec's type that way (the spec composes their sections, so it sits above them). Every other
import counts, at module level or inside a function.
"""

import ast
from pathlib import Path

import pytest

CP = Path(__file__).parent.parent / "cp"

#: Bottom floor first. A module may import modules on its own floor (if that makes no
#: circle) or below. Every module of cp/ must be listed (patterns end in ".*" for packages).
FLOORS = [
    ["cp", "cp.schema", "cp.yamlsafe", "cp.scaling", "cp.scaling.*", "cp.corpora"],
    ["cp.data", "cp.schedule", "cp.resources", "cp.doc", "cp.provenance", "cp.search",
     "cp.search.*", "cp.roles", "cp.prepare",
     "cp.kernels"],
    ["cp.config"],
    ["cp.study", "cp.memory"],
    ["cp.estimate"],
    ["cp.model", "cp.optim", "cp.distributed", "cp.analysis", "cp.plots", "cp.lock",
     "cp.parameterisation"],
    ["cp.runmodel", "cp.parallel"],
    ["cp.train", "cp.coord"],
    ["cp.execute"],
    ["cp.slurm"],
    ["cp.launch"],
    ["cp.stages.base"],
    ["cp.stages.check", "cp.stages.sweep", "cp.stages.select", "cp.stages.search",
     "cp.stages.transfer", "cp.stages.target", "cp.stages.report"],
    ["cp.stages"],
    ["cp.spec", "cp.spec_docs"],
    ["cp.tracking", "cp.tracking.*"],
    ["cp.pipeline"],
    ["cp.cli"],
]
STAGE_ORDER = ["check", "sweep", "select", "search", "transfer", "target", "report"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CP.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports at run time (absolute names), outside TYPE_CHECKING."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for a in node.names:  # `from . import sweep` imports the submodule
                found.add(f"{mod}.{a.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def load_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in CP.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imp in imports_of(path):
            target = imp if imp in modules else imp.rpartition(".")[0]
            if target not in modules or target == name:
                continue
            edges.add(target)
            # Importing a submodule runs its package's __init__ first, unless the importer
            # lives in that package (then the package is already being imported).
            parent = target.rpartition(".")[0]
            while parent and parent in modules and not name.startswith(parent + "."):
                edges.add(parent)
                parent = parent.rpartition(".")[0]
        graph[name] = edges
    return graph


GRAPH = load_graph()


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def external_closure(start: str) -> set[str]:
    """Top-level third-party packages imported anywhere in ``start``'s closure."""
    out = set()
    for mod in {start} | closure(start):
        path = next(p for p in CP.rglob("*.py") if module_name(p) == mod)
        out |= {i.split(".")[0] for i in imports_of(path) if not i.startswith("cp")}
    return out


def floor_of(module: str) -> int:
    for i, floor in enumerate(FLOORS):
        for pattern in floor:
            if module == pattern or (pattern.endswith(".*") and
                                     module.startswith(pattern[:-1])):
                return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in {__file__}")


def test_every_module_is_on_a_floor():
    for module in GRAPH:
        floor_of(module)


def test_no_import_circles():
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                strongconnect(w)
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
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            strongconnect(v)
    assert circles == [], f"import circles: {circles}"


def test_every_import_goes_to_the_same_floor_or_below():
    upward = [f"{a} (floor {floor_of(a)}) imports {b} (floor {floor_of(b)})"
              for a, edges in GRAPH.items() for b in edges if floor_of(b) > floor_of(a)]
    assert upward == []


def test_the_rule_tables_import_nothing_outside_scaling_and_no_torch():
    for module in (m for m in GRAPH if m.startswith("cp.scaling")):
        outside = {m for m in closure(module) if not m.startswith("cp.scaling")}
        assert outside == set(), f"{module} imports {outside}"
        assert not external_closure(module) & {"torch", "numpy", "polars"}, module


@pytest.mark.parametrize("module", ["cp.train", "cp.model", "cp.optim", "cp.data",
                                    "cp.distributed", "cp.parameterisation", "cp.runmodel",
                                    "cp.roles", "cp.prepare"])
def test_training_reaches_neither_tracking_nor_the_cli(module):
    reached = closure(module)
    assert not {m for m in reached if m.startswith(("cp.tracking", "cp.cli", "cp.pipeline"))}
    assert "mlflow" not in external_closure(module)


def test_searchers_reach_no_launcher():
    for module in (m for m in GRAPH if m.startswith("cp.search")):
        assert not closure(module) & {"cp.launch", "cp.slurm", "cp.execute"}, module


def test_the_model_takes_resolved_settings_not_the_spec():
    assert not {m for m in closure("cp.model") if m.startswith(("cp.spec", "cp.stages"))}


def test_a_stage_imports_only_stages_before_it():
    for i, stage in enumerate(STAGE_ORDER):
        later = {f"cp.stages.{s}" for s in STAGE_ORDER[i + 1:]}
        assert not GRAPH[f"cp.stages.{stage}"] & later, stage


def test_importing_what_only_plans_and_waits_loads_no_torch_and_no_mlflow():
    """The CLI, the Snakefile's imports and a stage process until it trains stay light: torch
    and mlflow are imported where a model is built or a run logged, not before."""
    import subprocess
    import sys

    code = ("import sys, cp.cli, cp.pipeline, cp.spec, cp.stages, cp.study; "
            "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
