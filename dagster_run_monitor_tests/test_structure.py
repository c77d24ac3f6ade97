"""The package's shape: rooms (subpackages) that may import only the rooms below them, no
import cycle among modules or rooms, small modules. Lazy imports inside functions count."""

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "dagster_run_monitor"

# Which place of the package may import which (besides itself). A place is a room (a
# subpackage) or a top-level module; "integration.internals" is a place of its own because
# every room below the integration reaches Dagster's internals only through it. A module
# belongs to the longest place its dotted name starts with; "" is the package's __init__.
LAYERS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "config": frozenset({"core"}),
    "worker": frozenset({"core", "config", "integration.internals"}),
    "integration.internals": frozenset(),
    "storage": frozenset({"core", "integration.internals"}),
    "launchers": frozenset({"core", "storage", "worker", "integration.internals"}),
    "alerts": frozenset({"core", "integration.internals"}),
    "metrics": frozenset({"core"}),
    "daemon": frozenset(
        {"core", "config", "storage", "launchers", "alerts", "metrics", "integration.internals"}
    ),
    "integration": frozenset(
        {"core", "config", "storage", "daemon", "worker", "version", "integration.internals"}
    ),
    "version": frozenset(),
    "": frozenset({"integration", "launchers", "core", "version"}),
    "cli": frozenset({"core", "config", "daemon"}),
    "demo": frozenset({"core", "config"}),
    "demo_job": frozenset({""}),
}
TOP_LEVEL_MODULES_AT_MOST = 10
LINES_AT_MOST = 400

# What the pure core never imports: storage, threads, processes, the network, the
# environment and files, launchers' clients, Dagster's storage, instance and daemon.
NOT_IN_CORE = (
    "os",
    "pathlib",
    "threading",
    "concurrent",
    "multiprocessing",
    "subprocess",
    "socket",
    "ssl",
    "http",
    "urllib",
    "smtplib",
    "sqlite3",
    "sqlalchemy",
    "psycopg2",
    "kubernetes",
    "docker",
    "boto3",
    "slack_sdk",
    "prometheus_client",
    "dagster_k8s",
    "dagster_docker",
    "dagster_postgres",
    "dagster_aws",
    "dagster._core.storage",
    "dagster._core.instance",
    "dagster._core.launcher.default_run_launcher",
    "dagster._daemon",
    "dagster._grpc",
)


@dataclass(frozen=True)
class Import:
    file: str  # the importing file, from the package's parent folder
    line: int
    text: str  # the import statement as written
    module: str  # the importing module
    target: str  # the module imported (ours: the deepest module or package that exists)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.text}"


def modules_of(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, packages named by their __init__."""
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__")] = path
    return found


def imports_in(package: Path) -> list[Import]:
    """Every import statement of every module, at the top or inside a function."""
    modules = modules_of(package)
    found = []
    for module, path in sorted(modules.items()):
        source = path.read_text()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    anchor = module.split(".")[: None if is_package else -1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                named = (f"{base}.{alias.name}" for alias in node.names)
                targets = [t for t in named if t in modules] or [base]  # submodules, else base
            else:
                continue
            text = ast.get_source_segment(source, node) or ""
            for target in targets:
                file = str(path.relative_to(package.parent))
                found.append(Import(file, node.lineno, " ".join(text.split()), module, target))
    return found


def place_of(module: str, package: str) -> str:
    """The LAYERS place a module of the package belongs to."""
    name = module.removeprefix(package).removeprefix(".")
    places = [p for p in LAYERS if p and (name == p or name.startswith(p + "."))]
    return max(places, key=len) if places else name


def layer_violations(package: Path) -> list[str]:
    """``file:line import``: why, for each import that breaks LAYERS or NOT_IN_CORE."""
    ours = package.name
    problems = []
    for imp in imports_in(package):
        place = place_of(imp.module, ours)
        if imp.target == ours or imp.target.startswith(ours + "."):
            target = place_of(imp.target, ours)
            if place not in LAYERS:
                problems.append(f"{imp}: {imp.module} is in no place of the LAYERS table")
            elif target != place and target not in LAYERS[place]:
                allowed = ", ".join(sorted(LAYERS[place])) or "nothing of ours"
                problems.append(f"{imp}: {place or ours} may import {allowed}, not {target}")
        elif place == "core":
            t = imp.target
            bad = next((n for n in NOT_IN_CORE if t == n or t.startswith(n + ".")), None)
            if bad is not None:
                problems.append(f"{imp}: the core imports no I/O ({bad})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every cycle of a directed graph, each as ``a -> b -> a``."""
    found = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                found.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt in graph:
                visit(nxt, [*path, nxt])

    for node in sorted(graph):
        visit(node, [node])
    return found


def test_every_import_follows_the_layers():
    imports = imports_in(PACKAGE)
    assert any(i.target == "dagster_run_monitor.core.policy" for i in imports)  # walk works
    assert layer_violations(PACKAGE) == []


def test_a_broken_rule_is_named_with_file_line_and_import(tmp_path):
    """The check itself: a core module importing the daemon, lazily, and a core module
    importing threading are both reported where they stand."""
    package = tmp_path / "dagster_run_monitor"
    for room in ("core", "daemon", "worker"):
        (package / room).mkdir(parents=True)
        (package / room / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "daemon" / "actions.py").write_text("X = 1\n")
    (package / "core" / "policy.py").write_text(
        "import threading\n\n\ndef plan():\n    from ..daemon import actions\n"
    )
    (package / "worker" / "beat.py").write_text(
        "from dagster_run_monitor.daemon.actions import X\n"
    )
    assert layer_violations(package) == [
        "dagster_run_monitor/core/policy.py:1 import threading: the core imports no I/O"
        " (threading)",
        "dagster_run_monitor/core/policy.py:5 from ..daemon import actions: core may import"
        " nothing of ours, not daemon",
        "dagster_run_monitor/worker/beat.py:1 from dagster_run_monitor.daemon.actions import X:"
        " worker may import config, core, integration.internals, not daemon",
    ]


def test_no_import_cycle_among_modules_or_places():
    imports = imports_in(PACKAGE)
    ours = [i for i in imports if i.target.startswith(PACKAGE.name)]
    modules: dict[str, set[str]] = {m: set() for m in modules_of(PACKAGE)}
    places: dict[str, set[str]] = {p: set() for p in LAYERS}
    for i in ours:
        if i.target != i.module:
            modules[i.module].add(i.target)
        source, target = place_of(i.module, PACKAGE.name), place_of(i.target, PACKAGE.name)
        if source != target:
            places[source].add(target)
    assert cycles(modules) == []
    assert cycles(places) == []
    assert cycles({"a": {"b"}, "b": {"a"}}) == ["a -> b -> a", "b -> a -> b"]  # the check


def test_every_place_of_the_table_exists_and_holds_every_module():
    names = {m.removeprefix(PACKAGE.name).removeprefix(".") for m in modules_of(PACKAGE)}
    for place in LAYERS:
        assert place in names, f"LAYERS names {place!r}, which the package does not have"
    unplaced = [n for n in names if place_of(f"{PACKAGE.name}.{n}", PACKAGE.name) not in LAYERS]
    assert unplaced == []


def test_few_top_level_modules_and_no_long_module():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= TOP_LEVEL_MODULES_AT_MOST, top
    long = [
        f"{path.relative_to(REPO)}: {lines} lines"
        for root in (PACKAGE, REPO / "benchmarks")
        for path in sorted(root.rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > LINES_AT_MOST
    ]
    assert long == []


@pytest.mark.parametrize("room", ["core", "worker"])
def test_importing_a_room_loads_only_what_it_may_import(room):
    """In a fresh interpreter, importing every module of the core (or of the worker room)
    loads no other room of ours: not the daemon, storage, launchers or alerts."""
    import subprocess

    program = (
        "import sys, pkgutil, importlib\n"
        f"import dagster_run_monitor.{room} as room\n"
        "for m in pkgutil.walk_packages(room.__path__, room.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "ours = [n for n, m in sys.modules.items() if n.startswith('dagster_run_monitor.')]\n"
        "print(' '.join(n for n in ours if sys.modules[n].__name__ == n))  # not aliases\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout.split()
    assert f"dagster_run_monitor.{room}" in loaded
    allowed = {room, "version", *LAYERS[room]}
    # a place inside a room (integration.internals) loads that room's __init__ too
    inits = {f"{PACKAGE.name}.{p.rpartition('.')[0]}" for p in allowed if "." in p}
    others = [m for m in loaded if place_of(m, PACKAGE.name) not in allowed and m not in inits]
    assert others == [], sorted(loaded)


def test_contributings_map_names_every_room():
    text = (REPO / "CONTRIBUTING.md").read_text()
    mapped = set(re.findall(r"^\| `(\w+)/` \|", text, re.M))
    rooms = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert mapped == rooms
