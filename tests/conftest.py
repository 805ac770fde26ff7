import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Unit tests get an empty asset cache; tests marked ``slow`` use the real one."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("SAFETY_PRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
