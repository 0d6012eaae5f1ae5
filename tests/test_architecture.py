"""The layout rule of docs/architecture.md, checked: a stage imports only the stages before it.

Every ``import speakertrip.x`` / ``from speakertrip.x import ...`` of every module (top-level or
inside a function) is read from the source, so a lazy import cannot hide a dependency.
"""

import ast
from pathlib import Path

import speakertrip

PACKAGE = Path(speakertrip.__file__).parent

# Stages in flow order; a module may import its own stage and the stages listed before it.
LAYERS = [
    {"errors", "registry", "options", "atomic", "plain_yaml", "tables"},  # shared foundations
    {"audio"},
    {"data"},
    {"corpora", "features"},
    {"models"},
    {"losses"},
    {"extraction"},
    {"scoring"},
    {"evaluation"},
    {"training"},
    {"verification"},
    {"testing", "demo", "commands", "cli", "__init__", "__main__"},  # entry points and test tooling
]
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def stage(module: str) -> str:
    """``speakertrip.models.artifact`` → ``models``; the package itself → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_stages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("speakertrip"):
            names = [node.module] if node.module != "speakertrip" else [f"speakertrip.{a.name}" for a in node.names]
            found |= {stage(name) for name in names}
        elif isinstance(node, ast.Import):
            found |= {stage(a.name) for a in node.names if a.name.startswith("speakertrip.")}
    return found - {"__version__"}


def test_every_module_belongs_to_a_stage():
    stages = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.rglob("*.py")}
    assert stages - set(LAYER_OF) == set(), "add the new stage to LAYERS and docs/architecture.md"


def test_no_module_imports_a_later_stage():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for other in imported_stages(path):
            if LAYER_OF[other] > LAYER_OF[own]:
                violations.append(f"{path.relative_to(PACKAGE)} ({own}) imports {other}")
    assert violations == []


def module_name(path: Path) -> str:
    """``.../speakertrip/corpora/synth.py`` → ``speakertrip.corpora.synth``; a package's ``__init__`` → the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """The speakertrip modules that ``path`` imports, lazy imports included: ``from a.b import c`` is ``a.b.c``
    when that is a module, else ``a.b``; relative imports are resolved."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {module for module in found if module in MODULES and module != own}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = {stack.pop()}
            while module not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    cycles = []
    for group in groups:  # walk inside the group from its first module until a module repeats
        path = [min(group)]
        while path.count(path[-1]) == 1:
            path.append(min(graph[path[-1]] & group))
        cycles.append(path[path.index(path[-1]):])
    return cycles


def test_import_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert sorted(import_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e2", "e"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No two speakertrip modules import each other, directly or through others, lazy imports included."""
    graph = {module: imported_modules(path) for module, path in MODULES.items()}
    assert import_cycles(graph) == []
