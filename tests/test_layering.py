"""The package's layers, read from its imports: each module imports only from its own layer or those below,
and never another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eclip_monai"
# Lower layers never import higher ones. The applications (top) may import each other.
LAYERS = (
    {"__init__", "errors", "files", "integrity", "seeding"},
    {"data"},
    {"prompts"},
    {"transforms"},
    {"networks"},
    {"losses"},
    {"metrics"},
    {"engines"},
    {"handlers"},
    {"evaluation", "inference", "rag", "study", "visualize"},
)


def layer_of(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def imports(path: Path):
    """``(imported eclip_monai module, imported names, line)`` of every import in ``path``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "eclip_monai":
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "eclip_monai":
                    yield alias.name, [], node.lineno


def test_every_package_is_in_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or
             (p.is_dir() and (p / "__init__.py").exists())}
    assert parts == set().union(*LAYERS)


def test_no_module_imports_a_higher_layer_or_a_private_name():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module, names, line in imports(path):
            target = module.split(".")[1] if "." in module else "__init__"
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if layer_of(target) > layer_of(own):
                problems.append(f"{where}: {own} imports the higher layer {module}")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                problems.append(f"{where}: imports private {private} from {module}")
    assert not problems, "\n".join(problems)
