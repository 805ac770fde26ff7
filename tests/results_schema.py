"""Check a job's results.json against the exported JSON Schema (docs/results.schema.json) with a general validator,
as another tool reading our output would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SCHEMA = Path(__file__).parent.parent / "docs" / "results.schema.json"


def assert_valid_results(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="the test extra installs jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '/'}: {e.message[:200]}"
              for e in validator.iter_errors(json.loads(Path(path).read_text(encoding="utf-8")))]
    assert not errors, f"{path} does not match {SCHEMA}:\n" + "\n".join(errors[:10])
