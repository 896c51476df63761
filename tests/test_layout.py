"""The package's shape: no import cycle (imports inside functions included), the library apart from the application."""

import ast
import glob
import inspect
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "sidjax")


def _module(path: str) -> str:
    name = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


MODULES = {_module(p): p for p in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)}


def _imports(path: str) -> set[str]:
    """The sidjax modules ``path`` imports anywhere in its body (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sidjax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sidjax"):
            for alias in node.names:  # ``from sidjax.train import cli`` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_counting_imports_inside_functions():
    inner = {name: deps - {"sidjax"} for name, deps in GRAPH.items() if name != "sidjax"}
    assert _cycle(inner) is None, " -> ".join(_cycle(inner))
    users = sorted(name for name, deps in GRAPH.items() if "sidjax" in deps and name not in ("sidjax",))
    assert users == [], f"modules that import the package's __init__ (import the submodule instead): {users}"


def test_the_library_does_not_import_the_application():
    # the package exports run and load_run; python -m runs the command line
    entry_points = ("sidjax", "sidjax.__main__")
    library = [name for name in GRAPH if not name.startswith("sidjax.train") and name not in entry_points]
    assert {name: sorted(d for d in GRAPH[name] if d.startswith("sidjax.train")) for name in library} == {
        name: [] for name in library
    }


def test_the_configuration_does_not_import_the_engine():
    engine = {"sidjax.architectures", "sidjax.builders", "sidjax.steps", "sidjax.ops", "sidjax.network",
              "sidjax.learner", "sidjax.units", "sidjax.stages", "sidjax.schedule", "sidjax.heads"}  # fmt: skip
    assert GRAPH["sidjax.train.config"] & engine == set()


def _names_imported(path: str, module: str) -> set[str]:
    """The names ``path`` imports from ``module`` anywhere in its body."""
    return {
        alias.name
        for node in ast.walk(ast.parse(open(path).read()))
        if isinstance(node, ast.ImportFrom) and node.module == module
        for alias in node.names
    }


def test_the_run_layer_calls_no_step_builder_below_the_learner():
    # the run layer gets its step, its state and the state's template from the Learner alone
    below = {"sidjax.steps", "sidjax.stages", "sidjax.units", "sidjax.schedule"}
    run_layer = {name: path for name, path in MODULES.items() if name.startswith("sidjax.train")}
    reached = {name: sorted(GRAPH[name] & below) for name in run_layer}
    assert reached == {name: [] for name in run_layer}
    builders = {"new_state", "apply_gradients", "step_part", "map_units"}
    used = {
        name: sorted(_names_imported(path, "sidjax.state") & builders) for name, path in run_layer.items()
    }
    assert used == {name: [] for name in run_layer}


def _body_lines(node: ast.FunctionDef) -> int:
    """A function's lines after its docstring."""
    body = node.body
    first = body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        if len(body) == 1:
            return 0
        first = body[1]
    return node.end_lineno - first.lineno + 1


def test_functions_and_files_stay_short_enough_to_read_at_once():
    long_functions, long_files = [], []
    for name, path in MODULES.items():
        source = open(path).read()
        if len(source.splitlines()) > 420:
            long_files.append(name)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > 60:
                long_functions.append(f"{name}.{node.name}: {_body_lines(node)} lines")
    assert long_functions == [] and long_files == []
    assert len(open(MODULES["sidjax.train.runner"]).read().splitlines()) <= 270


def _reached(start: str) -> set[str]:
    """Every sidjax module ``start`` imports, directly or through others (imports inside functions counted)."""
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_configuration_and_the_methods_load_no_data_reader_and_no_evaluation():
    heavy = {m for m in MODULES if m.startswith("sidjax.data") or m == "sidjax.evaluation"}
    for start in ("sidjax.train.config", "sidjax.methods"):
        assert _reached(start) & heavy == set(), f"{start} reaches {sorted(_reached(start) & heavy)}"
    # and at run time, through the package's own __init__ (whose names load when first used)
    code = "import sidjax.train.config, sidjax.methods, sys; print(sorted(m for m in sys.modules if m.startswith('sidjax')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "sidjax.data" not in loaded and "sidjax.evaluation" not in loaded, loaded


def test_the_package_exports_what_it_lists():
    import sidjax

    assert set(sidjax.__all__) == set(sidjax._EXPORTS) | {"__version__"}
    assert all(getattr(sidjax, name) is not None for name in sidjax.__all__)


def test_run_reads_at_once_with_its_docstring():
    from sidjax.train import runner

    lines, _ = inspect.getsourcelines(runner.run)
    assert len(lines) <= 60, f"run is {len(lines)} lines with its docstring"
