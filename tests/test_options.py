"""Options validate without torch: ``--help`` and a bad option answer at once, before any heavy import."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_options_loads_no_torch():
    code = "import sys, safety_prune.jobs.options, safety_prune.cli; assert 'torch' not in sys.modules, 'torch'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
