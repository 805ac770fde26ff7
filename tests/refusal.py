"""How a refused command must look (exit 2, one ``safety-prune:`` paragraph, inputs untouched, no temps left),
and a small separate filesystem to write to."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny import tree_hashes

from safety_prune.cli import main

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def temps(*folders: Path) -> list[Path]:
    """Hidden staging and temp folders/files (``.<name>.<host>-<pid>.<random>.tmp``) anywhere below ``folders``."""
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.rglob(".*.tmp")]
    return found


def paragraph(err: str) -> str:
    """The error paragraph: exactly one ``safety-prune:`` line, no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("safety-prune:")]
    assert len(lines) == 1, err
    return lines[0]


def refused(capsys, argv: list[str], inputs: list[Path], around: list[Path]) -> str:
    """Run the CLI; it must refuse with status 2 and one paragraph, keep ``inputs`` byte-identical and leave no
    staging below ``around``. Returns the paragraph."""
    before = tree_hashes(*inputs, mtimes=True)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert tree_hashes(*inputs, mtimes=True) == before
    assert not temps(*around, *inputs)
    return paragraph(err)


@contextlib.contextmanager
def mounted(path: Path, *, read_only: bool = False, size: str = "64m") -> Iterator[Path]:
    """A tmpfs mounted at ``path`` (a separate filesystem), unmounted afterwards; skips when mounting is not
    possible (not root, or no mount permission in this sandbox)."""
    path.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); this checks --out on another filesystem")
    opts = f"size={size}" + (",ro" if read_only else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); this checks --out on another filesystem")
    try:
        assert os.stat(path).st_dev != os.stat(path.parent).st_dev
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


ROOT = Path(__file__).resolve().parent.parent  # the checkout: PYTHONPATH of a child process


def job_argv(kind: str, model: Path | str, suite: Path, out: Path | str, *extra: str) -> list[str]:
    argv = [kind, "--model", str(model), "--probe", str(suite), "--out", str(out), "--batch-size", "4", *extra]
    return argv + {"correct": ["--k", "2", "--force"], "compress": ["--method", "magnitude"]}.get(kind, [])


@contextlib.contextmanager
def read_only_folder(path: Path):
    """An empty folder nobody can write to: a read-only tmpfs as root (root ignores modes), else mode 0555."""
    if IS_ROOT:
        with mounted(path, read_only=True):
            yield path
        return
    path.mkdir(parents=True)
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)
