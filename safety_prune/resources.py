"""Locate the data folders that ship with the package (probes, report templates, small data).

The wheel maps the repo folders ``probes/``, ``reports/`` and ``data/`` into the packages
``safety_prune.probes`` etc., while a source checkout keeps them beside the package. Callers should not
care which of the two they run from. Both are looked up next to *this* module, never through the import
system: an editable install maps ``safety_prune.probes`` to its own checkout, so a copy of the code run with
``PYTHONPATH`` (a snapshot of another commit) would otherwise read the installed checkout's probes.
"""

from __future__ import annotations

from pathlib import Path

from .errors import SafetyPruneError

RESOURCE_KINDS = ("probes", "reports", "data")


def resource_dir(kind: str) -> Path:
    """Return the folder holding the packaged resources of ``kind`` (probes, reports or data)."""
    if kind not in RESOURCE_KINDS:
        raise SafetyPruneError(f"unknown resource kind {kind!r}; expected one of {', '.join(RESOURCE_KINDS)}")
    here = Path(__file__).resolve().parent
    packaged, checkout = here / kind, here.parent / kind  # wheel layout, source-checkout layout
    for folder in (packaged, checkout):
        if folder.is_dir():
            return folder
    raise SafetyPruneError(
        f"cannot find the packaged '{kind}' folder (looked in {packaged} and {checkout}). "
        "Reinstall safety-prune from a wheel or run from a full source checkout."
    )
