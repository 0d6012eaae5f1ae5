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
