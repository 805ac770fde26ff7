"""The jobs behind the CLI and the Python API: one module each (``jobs.audit.audit``, ``jobs.correct.correct``,
``jobs.compress.compress``, ``jobs.circuit.circuit``), their options in ``jobs.options``; no job imports another."""
