"""A run directory: staged writes, the manifest, and the results schema version.

All files of a run are written into a hidden staging folder beside ``--out`` and
moved in only when the run succeeds, so a failed run leaves no partial output.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import OutputError
from .io import sweep_stale_temps, temp_prefix

SCHEMA_VERSION = 1
_PACKAGES = ("safety-prune", "torch", "transformers", "tokenizers", "safetensors", "numpy", "datasets",
             "alt-profanity-check", "scikit-learn", "detoxify", "accelerate", "gguf", "jinja2", "matplotlib")


def check_out_dir(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse a non-empty run directory unless ``overwrite``; writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory. Choose another path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"--out {out} is not empty. Choose an empty or new directory, or pass "
                          "--overwrite to replace the run files in it.")
    return out


class Staging:
    """Collect a run's files in a temporary sibling folder; ``commit`` moves them into ``out``."""

    def __init__(self, out: Path):
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(out)  # staging left by a killed run (SIGKILL cannot clean up)
        self.dir = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent))

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for item in sorted(self.dir.iterdir()):
            target = self.out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        self.dir.rmdir()

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def staged(out: Path) -> Iterator[Staging]:
    """Write a run into staging; on success move it into ``out`` (rank 0 only), on any failure discard it."""
    from .distributed import is_main_process

    staging = Staging(out)
    try:
        yield staging
    except BaseException:
        staging.discard()
        raise
    if is_main_process():
        staging.commit()
    else:  # under torchrun every rank computed the same results
        staging.discard()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found


def manifest(*, seed: int, argv: list[str] | None, data_files: dict[str, str],
             model_files: dict[str, str], started: float, extra: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "command": argv if argv is not None else sys.argv,
        "seed": seed,
        "git_commit": _git_commit(),
        "versions": _versions(),
        "platform": platform.platform(),
        "data_sha256": data_files,
        "model_sha256": model_files,
        "started_unix": round(started, 3),
        "duration_s": round(time.time() - started, 3),
        **(extra or {}),
    }
