import pytest
from tiny import save_tiny, write_tiny_suite


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Llama and a tiny toxicity suite, shared by the tests of one module: (root, model, suite)."""
    root = tmp_path_factory.mktemp("job")
    save_tiny("llama", root / "model")
    return root, str(root / "model"), write_tiny_suite(root / "suite")
