"""Import the repository's stand-alone scripts (training/, benchmarks/, conversion/) as modules in tests."""

import importlib.util
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """The script at ``REPO / relative_path``, imported under a private name (it is not a package module)."""
    path = REPO / relative_path
    name = "_script_" + "_".join(Path(relative_path).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
