"""Options validate without torch: ``--help`` and a bad option answer at once, before any heavy import."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_options_loads_no_torch():
    code = "import sys, safety_prune.jobs.options, safety_prune.cli; assert 'torch' not in sys.modules, 'torch'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_checking_max_memory_loads_no_torch():
    """``--max-memory`` is parsed by a torch-free size parser (``sizes.py``), so a bad size answers before torch
    loads; in a subprocess, so that other tests' imports cannot mask a torch import."""
    code = ("import sys, safety_prune.jobs.options as o\n"
            "parse = o.SuiteOptions.__dataclass_fields__['max_memory'].metadata['parse']\n"
            "assert parse('2GB') == 2 * 10**9\n"
            "assert 'torch' not in sys.modules, 'torch'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
