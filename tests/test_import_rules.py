"""The house rules of DESIGN.md §2, checked on the source: the inference path (models, schedulers, pipelines) never
imports training or export code, and no module imports another module's private (underscore) name."""

import ast
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "diffusers_neodragon"
INFERENCE = ("models", "schedulers", "pipelines")
FORBIDDEN = ("training_utils", "export", "training")


def _imports(path: Path):
    """(absolute module, imported names) of every import in a file, relative imports resolved."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, [alias.name for alias in node.names]


def _files(*subpackages):
    roots = [PACKAGE / s for s in subpackages] if subpackages else [PACKAGE]
    return sorted(p for root in roots for p in root.rglob("*.py"))


@pytest.mark.parametrize("path", _files(*INFERENCE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_inference_path_imports_no_training_or_export_code(path):
    for module, _ in _imports(path):
        inside = module.split(".")[1:2] if module.startswith("diffusers_neodragon") else []
        assert not (inside and inside[0] in FORBIDDEN), f"{path.relative_to(PACKAGE)} imports {module}"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_private_name_of_another(path):
    for module, names in _imports(path):
        if not module.startswith("diffusers_neodragon"):
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{path.relative_to(PACKAGE)} imports {private} from {module}"
        assert not any(part.startswith("_") and part != "__init__" for part in module.split(".")), module
