"""Load a script of benchmarks/ as a module, the way it runs: with benchmarks/ on the path for its siblings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (it may import its sibling scripts, e.g. stability.py)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # a dataclass looks its module up while it is built
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))
