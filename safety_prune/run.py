"""A run directory: staged writes, the manifest, and the results schema version.

All files of a run are written into a hidden staging folder on ``--out``'s filesystem (inside ``--out`` when
that is an existing folder or a mount point, else beside it) and moved in only when the run succeeds, so a
failed run leaves no partial output. Whether ``--out`` can take the run is checked before any work.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import OutputError
from .io import (
    build_inside,
    deferred_signals,
    is_stale_temp,
    move_into,
    note_committed,
    publish_dir,
    sweep_stale_temps,
    temp_prefix,
)
from .results import SCHEMA_VERSION  # one number for results.json and its manifest

RUN_FILES = ("results.json", "samples.jsonl", "report.html", "reference_generations.jsonl", "circuit.json",
             "relevance.safetensors", "masks.json", "masks.safetensors")
"""The files a job writes into its run directory."""

COMPARE_NAME = "compare.html"
"""The file name ``report --compare`` writes inside a directory given as its output (run B's by default)."""

_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)  # a full or failing disk
_GENERATIONS = "generations-*.jsonl"  # the unpruned model's cached continuations (evaluation.behaviour)

_PACKAGES = ("safety-prune", "torch", "transformers", "tokenizers", "safetensors", "numpy", "datasets",
             "alt-profanity-check", "scikit-learn", "detoxify", "accelerate", "gguf", "jinja2", "matplotlib")


def check_target_path(target: Path, flag: str) -> None:
    """Refuse, before any work, an output path the run could not write at its end; leaves nothing behind.

    The path must be UTF-8 (it is recorded in results.json and report.html), no part of it a dangling symbolic
    link or a file, and the folder the run is staged in (the target itself when it is an existing folder or a
    mount point, else its nearest existing parent) must take a new entry: read-only folders and filesystems
    fail here, not after the run.
    """
    text = str(target)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise OutputError(f"{flag} {text!r} contains bytes that are not UTF-8 ({os.fsencode(text)!r}). The run "
                          "records its paths in UTF-8 files (results.json, report.html): choose a path whose name "
                          "is valid UTF-8.") from None
    try:
        existing = None
        for p in (target, *target.parents):
            if p.is_symlink() and not p.exists():
                which = f"{flag} {target}" if p == target else f"{flag} {target}: its parent {p}"
                raise OutputError(f"{which} is a symbolic link to {os.readlink(p)}, which does not exist. Create "
                                  f"the link's target, remove the link, or choose another {flag}.")
            if p.exists():
                existing = p
                break
    except OSError as exc:
        raise OutputError(f"{flag} {target} cannot be inspected ({exc.strerror or exc}). Choose a location you "
                          "can read and write.") from None
    if existing is None:
        raise OutputError(f"{flag} {target}: none of its parent folders exist. Give a path under an existing "
                          "folder.")
    if existing != target and not existing.is_dir():
        raise OutputError(f"{flag} {target} lies under {existing}, which is a file, not a folder. Choose a path "
                          "under a folder.")
    if not existing.is_dir():
        return  # the target itself is a file: the caller names that
    try:
        os.rmdir(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=existing))
    except OSError as exc:
        where = "" if existing == target else f" (its nearest existing folder {existing})"
        raise OutputError(f"{flag} {target}{where} is not writable: {exc.strerror or exc}. Choose a writable "
                          "folder on a writable filesystem.") from None


def check_not_inside(target: Path, folder: Path | None, flag: str) -> None:
    """Refuse an output path inside the input model folder: inputs are never modified."""
    if folder is None:
        return
    path, src = target.expanduser().resolve(), folder.resolve()
    if path == src or src in path.parents:
        raise OutputError(f"{flag} {target} lies inside the input model folder {folder}. The input model is never "
                          "modified: choose a folder outside it.")


def check_not_over_inputs(target: Path, inputs: Iterable[str | os.PathLike[str]], flag: str) -> None:
    """Refuse an output folder that is, or holds, an input file the run reads (the suite, its data files, model
    files): a run directory is replaced whole by ``--overwrite``, and inputs are never modified."""
    path = target.expanduser().resolve()
    for name in inputs:
        src = Path(name).expanduser()
        if not src.exists():
            continue  # keys such as "asset:..." or "hub:..." name no local file
        src = src.resolve()
        if src == path or path in src.parents:
            raise OutputError(f"{flag} {target} holds {src}, an input of this run. Inputs are never modified or "
                              f"replaced: choose an output folder that holds no input, e.g. a new folder.")


def is_run_entry(path: Path) -> bool:
    """Whether ``path`` is a file a safety_prune run (or ``report --compare``) writes into a run directory."""
    return path.is_file() and not path.is_symlink() and (
        path.name in RUN_FILES or path.name == COMPARE_NAME or fnmatch.fnmatch(path.name, _GENERATIONS))


def run_job(folder: Path) -> str | None:
    """The ``job`` recorded in ``folder/results.json``, or None when there is no readable one."""
    try:
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    job = data.get("job") if isinstance(data, dict) else None
    return job if isinstance(job, str) else None


def check_out_dir(out: str | os.PathLike[str], overwrite: bool, job: str) -> Path:
    """Refuse, before any work, an --out the run cannot write, or one it could only write by losing files.

    ``--out`` must be new, empty, or (with ``overwrite``) a previous ``job`` run holding nothing but run files:
    the new run then replaces it whole. A folder with any other file (a user's data, a model, a suite) is
    refused even with ``overwrite``, so no file the tool did not write is ever replaced. Leaves nothing behind
    (the writability probe is removed at once).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory. Choose another path.")
    found = entries(out) if out.is_dir() else []
    if found and not overwrite:
        raise OutputError(f"--out {out} is not empty. Choose an empty or new directory, or pass "
                          "--overwrite to replace the previous run in it.")
    if found:
        foreign = sorted(p.name for p in found if not is_run_entry(p))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputError(f"--out {out} holds files no safety_prune run wrote ({shown}). --overwrite replaces "
                              "only a previous run, whole, so these would be lost: choose a new or empty folder, "
                              "or move them out first.")
        previous = run_job(out)
        if previous is None:
            raise OutputError(f"--out {out} has run files but no readable results.json, so it is not a finished "
                              "run that --overwrite may replace. Choose a new or empty folder, or remove the "
                              "folder yourself.")
        if previous != job:
            raise OutputError(f"--out {out} holds a `{previous}` run; --overwrite replaces only a previous `{job}` "
                              f"run. Choose another folder for this {job} run.")
    check_target_path(out, "--out")
    return out


def entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` apart from staging left inside it by a killed run (swept by the next run)."""
    return [p for p in folder.iterdir() if not is_stale_temp(p, folder)]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs (staging and temp files are removed)."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated`` (main thread only, and only where the handler in force
    was installed from Python, so that it can be put back; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is None:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Staging:
    """Collect a run's files in a hidden folder on ``out``'s filesystem; ``commit`` moves them into ``out``.

    The folder is inside ``out`` when that is an existing folder (maybe a mount point), else beside it, so the
    commit is a rename (one for a new ``out``, one per file otherwise); a copy then a rename only where a rename
    still cannot cross (``io.move_into``).
    """

    def __init__(self, out: Path):
        self.out = out
        self.inside = build_inside(out)
        if not self.inside:
            out.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(out)  # staging left by a killed run (SIGKILL cannot clean up)
        self.was_empty = not self.inside or not entries(out)
        self.dir = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".tmp",
                                         dir=out if self.inside else out.parent))

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self) -> None:
        """Move the run into ``out``, with SIGINT/SIGTERM held until it is done; records it in ``committed``.

        If the move fails, the staging and whatever of it already reached an ``out`` that was empty or new are
        removed, and OutputError says so.
        """
        with deferred_signals():
            moved: list[Path] = []
            existed = self.out.exists()
            try:
                if self.inside:
                    stale = [p for p in entries(self.out) if p != self.dir and is_run_entry(p)
                             and not (self.dir / p.name).exists()]
                    for item in sorted(self.dir.iterdir()):
                        move_into(item, self.out / item.name)
                        moved.append(self.out / item.name)
                    self.dir.rmdir()
                    for path in stale:  # the previous run's files this run did not replace: the run is whole
                        path.unlink(missing_ok=True)
                else:
                    publish_dir(self.dir, self.out)
            except OSError as exc:
                self.discard()
                if self.inside and self.was_empty:
                    for path in moved:
                        if path.is_dir() and not path.is_symlink():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink(missing_ok=True)
                elif not self.inside and not existed and self.out.is_dir():
                    shutil.rmtree(self.out, ignore_errors=True)
                kept = ("Nothing of it was kept." if self.was_empty or not moved else
                        f"{len(moved)} of its files had already replaced the old ones in --out; the rest was "
                        "discarded.")
                raise OutputError(f"The run finished but could not be moved into --out {self.out}: {exc}. {kept} "
                                  "Check the free space and permissions of --out and run again.") from exc
            note_committed(self.out)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def staged(out: Path) -> Iterator[Staging]:
    """Write a run into staging; on success move it into ``out`` (rank 0 only), on any failure discard it.

    The commit is part of the cleanup: whatever ends the block, the staging folder is gone afterwards (a
    failed commit discards it too and raises OutputError).
    """
    from .distributed import is_main_process

    staging = Staging(out)
    finished = False
    try:
        yield staging
        finished = True
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        raise OutputError(f"Writing the run to --out {out} failed: {exc.strerror} ({exc.filename or out}). "
                          "Nothing of it was kept. Free space on that filesystem (or choose another --out) and "
                          "run again.") from exc
    finally:
        if finished and is_main_process():
            staging.commit()
        else:  # a failure, an interrupt, or a non-zero torchrun rank (every rank computed the same results)
            staging.discard()


def _git(*args: str) -> str | None:
    """``git args`` in this package's checkout; None when it is not one (an installed wheel) or git is missing."""
    root = Path(__file__).resolve().parent.parent
    try:
        res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _git_commit() -> str | None:
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out else None


def _git_dirty() -> bool | None:
    """Whether the checkout had uncommitted changes to tracked files: then the commit alone does not reproduce
    the run."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def _hardware() -> dict[str, Any]:
    """What the run's speed and float results depend on: CPU, cores, memory, accelerator. ``cpu_capability`` is the
    vector instruction set torch's CPU kernels dispatch to (AVX2, AVX512, ...): two CPUs with another one round
    floats differently in the last bits, so bit-identical numbers need the same capability, not just "cpu";
    ``mkl_cbwr`` is MKL's reproducibility mode (``AUTO,STRICT``: the same numbers whatever the thread count)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    hw: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "mkl_cbwr": os.environ.get("MKL_CBWR")}
    with suppress(ValueError, OSError, AttributeError):
        hw["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if torch.cuda.is_available():
        hw["accelerator"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return hw


def _operator() -> str | None:
    """Who ran it: ``SAFETY_PRUNE_OPERATOR`` if set (a name for the audit trail), else the login name."""
    import getpass

    try:
        return os.environ.get("SAFETY_PRUNE_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):
        return None


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
        "git_dirty": _git_dirty(),
        "operator": _operator(),
        "versions": _versions(),
        "platform": platform.platform(),
        "hardware": _hardware(),
        "data_sha256": data_files,
        "model_sha256": model_files,
        "started_unix": round(started, 3),
        "duration_s": round(time.time() - started, 3),
        **(extra or {}),
    }
