import os
import sys
from pathlib import Path

# The determinism contract (README, "Same command, same answer") is tested in MKL's strict reproducible mode: on
# AVX-512 CPUs MKL otherwise splits small matrix products by the thread count (benchmarks/mkl_reproducible.py).
# MKL reads it once, at its first call, so it is set before anything is computed.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest
from tiny import write_tiny_suite

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Unit tests get an empty asset cache; tests marked ``slow`` use the real one."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("SAFETY_PRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """(root, model folder, suite path): a tiny Llama and a tiny suite shared by the tests of one module; tests
    that change the model copy it first."""
    from tiny import save_tiny

    root = tmp_path_factory.mktemp("tiny")
    save_tiny("llama", root / "model")
    return root, root / "model", Path(write_tiny_suite(root / "suite"))


@pytest.fixture
def no_model_load(monkeypatch):
    """The refusal must come before any work: loading the model fails the test."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad output path was refused")
    monkeypatch.setattr("safety_prune.jobs.common.load_model", refuse)
