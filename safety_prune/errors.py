"""One exception family: every message names the bad input and how to fix it."""

from __future__ import annotations


class SafetyPruneError(Exception):
    """Base class. The CLI prints the message (no traceback) and exits with ``exit_code``."""

    exit_code = 2


class ModelLoadError(SafetyPruneError):
    """A model spec could not be resolved or loaded."""


class UnsupportedArchitectureError(SafetyPruneError):
    """The model family has no adapter or LRP composite."""


class ProbeSuiteError(SafetyPruneError):
    """A probe suite is missing or invalid."""


class DataSourceError(SafetyPruneError):
    """A prompt or text source is missing, empty or malformed."""


class AssetError(SafetyPruneError):
    """An offline asset is missing, unreachable or fails its checksum."""


class OutputError(SafetyPruneError):
    """An output location is unusable (non-empty, inside an input, ...)."""


class ConfigError(SafetyPruneError):
    """An option value is out of range or inconsistent with others."""


class AttributionError(SafetyPruneError):
    """Attribution produced an invalid result (e.g. non-finite relevance)."""


class ResultsError(SafetyPruneError):
    """A run directory or results file is missing, corrupt or incompatible."""


class SaveRefused(SafetyPruneError):
    """``--save-model`` refused a corrected model that fails the release check; the report was written.

    Exits with the deployment gate's status (``gate.GATE_EXIT_CODE``)."""

    exit_code = 3


class RegistryError(SafetyPruneError):
    """A registry entry's ``"module:object"`` does not resolve: a bug in safety_prune or in a plug-in file."""
