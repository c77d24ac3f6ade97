"""The package's shape: no import cycle among its modules, lazy imports included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dagster_run_monitor"


def imports_of_each_module() -> dict[str, set[str]]:
    """Our modules each module imports, at the top or inside a function."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(p for p in parts if p != "__init__")] = path
    imports: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE.name):
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    found.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith(PACKAGE.name))
        imports[name] = found - {name}
    return imports


def test_no_import_cycle_among_our_modules():
    imports = imports_of_each_module()
    assert "dagster_run_monitor.daemon" in imports  # the walk found the package
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(imports.get(module, ())):
            if imported in path:
                cycles.append(" -> ".join([*path[path.index(imported) :], imported]))
            else:
                visit(imported, [*path, imported])

    for module in sorted(imports):
        visit(module, [module])
    assert cycles == []
