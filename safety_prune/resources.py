"""Locate the data folders that ship with the package (probes, report templates, small data).

The wheel maps the repo folders ``probes/``, ``reports/`` and ``data/`` into the packages
``safety_prune.probes`` etc., while a source checkout keeps them beside the package. Callers should not
care which of the two they run from.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from .errors import SafetyPruneError

RESOURCE_KINDS = ("probes", "reports", "data")


def resource_dir(kind: str) -> Path:
    """Return the folder holding the packaged resources of ``kind`` (probes, reports or data)."""
    if kind not in RESOURCE_KINDS:
        raise SafetyPruneError(f"unknown resource kind {kind!r}; expected one of {', '.join(RESOURCE_KINDS)}")
    try:
        found = importlib.resources.files(f"safety_prune.{kind}")
    except ModuleNotFoundError:
        found = None
    if isinstance(found, Path) and found.is_dir():
        return found
    checkout = Path(__file__).resolve().parent.parent / kind
    if checkout.is_dir():
        return checkout
    raise SafetyPruneError(
        f"cannot find the packaged '{kind}' folder (looked in the installed package and in {checkout}). "
        "Reinstall safety-prune from a wheel or run from a full source checkout."
    )
