"""The project's modules import one another without cycles, and its apps depend one way.

forms_app imports events (its submit calls the engine, its waiting page reads runs); events names
forms_app's models by string (``events.models.FORM_MODEL``...) and never imports forms_app. Nothing in
the product imports the demo app, which is installed only in development (config/settings.py).

The graph is read from the source with ``ast``: every ``import`` and ``from ... import`` naming a
module of the project, at module level or inside a function. Importing ``a.b.c`` also runs the
packages ``a`` and ``a.b`` (their ``__init__``, which may re-export from submodules), unless the
importing module is inside them already.
"""

import ast
from pathlib import Path

from django.conf import settings

PACKAGES = ("config", "forms_app", "events", "demo")

# Cycles not removed yet, each by what it is and the import that closes it (importer, imported):
# the test ignores exactly these imports. An empty list is the goal; take an entry off once its
# import is gone (the test says so).
KNOWN_CYCLES = {}


def project_modules(root):
    """{dotted module name: (path, is_package)} for every .py file of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _within(name, modules):
    """The longest prefix of ``name`` that is a project module, or None (django, the standard library...)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module, is_package, node, modules):
    """The project modules one import statement names."""
    if isinstance(node, ast.Import):
        return [_within(alias.name, modules) for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    # ``from package import name``: a submodule if there is one, else a name defined in ``package``.
    return [_within(f"{base}.{alias.name}", modules) for alias in node.names]


def import_graph(root):
    """{module: {module it loads: first line that does}} over the project's own modules."""
    modules = project_modules(root)
    graph = {}
    for module, (path, is_package) in modules.items():
        loaded_already = {module} | {module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)}
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in filter(None, _targets(module, is_package, node, modules)):
                parts = target.split(".")
                for loaded in (".".join(parts[:end]) for end in range(1, len(parts) + 1)):
                    if loaded in modules and loaded not in loaded_already:
                        edges.setdefault(loaded, node.lineno)
    return graph


def cycles(graph):
    """The import cycles: each strongly connected group of two or more modules, as a set (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1 or module in graph.get(module, ()):
                found.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def chain(graph, group):
    """The shortest cycle through the first module of ``group``, as "a:line -> b:line -> a": where to cut it."""
    start = min(group)
    previous, todo = {start: None}, [start]
    while todo:
        here = todo.pop(0)
        for target in sorted(graph[here]):
            if target == start:
                path = [here]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                path.reverse()
                return (
                    " -> ".join(f"{m}:{graph[m][n]}" for m, n in zip(path, path[1:] + [start], strict=True))
                    + f" -> {start}"
                )
            if target in group and target not in previous:
                previous[target] = here
                todo.append(target)
    raise ValueError(f"{start} is on no cycle")


def edges_between(graph, source_package, target_package):
    return sorted(
        f"{module}:{line} imports {target}"
        for module, targets in graph.items()
        if module.split(".")[0] == source_package
        for target, line in targets.items()
        if target.split(".")[0] == target_package
    )


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


GRAPH = import_graph(Path(settings.BASE_DIR))


def test_no_module_of_the_project_takes_part_in_an_import_cycle():
    known = set(KNOWN_CYCLES.values())
    graph = {
        module: {target: line for target, line in targets.items() if (module, target) not in known}
        for module, targets in GRAPH.items()
    }

    assert [chain(graph, group) for group in cycles(graph)] == []


def test_every_known_cycle_is_still_there():
    """Once the import that closes a known cycle is gone, its entry goes too."""
    gone = [name for name, (importer, imported) in KNOWN_CYCLES.items() if imported not in GRAPH[importer]]

    assert gone == [], "take these off KNOWN_CYCLES"
    for importer, imported in KNOWN_CYCLES.values():
        assert any(importer in group and imported in group for group in cycles(GRAPH))


def test_forms_app_imports_events_and_events_never_imports_forms_app():
    assert "events.engine" in GRAPH["forms_app.services"]  # the submit calls the engine
    assert edges_between(GRAPH, "events", "forms_app") == []


def test_nothing_outside_the_demo_imports_it():
    assert "events.queue" in GRAPH["demo.standin"]  # the demo sends its job through the queue
    for package in ("events", "forms_app", "config"):
        assert edges_between(GRAPH, package, "demo") == []


def test_the_engine_never_reaches_the_job_entry_points():
    """The engine sends through events.queue; events.tasks (which calls the engine) is not below it."""
    below_the_engine = reachable(GRAPH, "events.engine")

    assert "events.queue" in below_the_engine
    assert "events.tasks" not in below_the_engine


def test_the_graph_sees_imports_inside_functions_and_through_packages(tmp_path):
    (tmp_path / "events" / "engine").mkdir(parents=True)
    (tmp_path / "events" / "__init__.py").write_text("")
    (tmp_path / "events" / "engine" / "__init__.py").write_text("from .walks import walk\n")
    (tmp_path / "events" / "engine" / "walks.py").write_text("def walk():\n    from ..tasks import job\n")
    (tmp_path / "events" / "tasks.py").write_text("from events.engine.walks import walk\n")

    graph = import_graph(tmp_path)

    assert graph["events.tasks"] == {"events.engine": 1, "events.engine.walks": 1}
    assert graph["events.engine.walks"] == {"events.tasks": 2}
    [group] = cycles(graph)
    assert group == {"events.engine", "events.engine.walks", "events.tasks"}
    assert chain(graph, group).endswith("-> events.engine")


def test_only_the_queue_package_imports_django_q():
    """All of django-q2 stays behind events/queue/ (its docstring lists the private parts we rely on)."""
    root = Path(settings.BASE_DIR)
    importers = []
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            relative = path.relative_to(root).as_posix()
            if relative.startswith("events/queue/"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                )
                if any(name == "django_q" or name.startswith("django_q.") for name in names):
                    importers.append(f"{relative}:{node.lineno}")
    assert importers == []
