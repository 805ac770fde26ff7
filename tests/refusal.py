"""How a refused command must look: exit 2, one ``safety-prune:`` paragraph, inputs untouched, no temps left."""

from __future__ import annotations

from pathlib import Path

from tiny import tree_hashes

from safety_prune.cli import main


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
