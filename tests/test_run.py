"""The write rule (``run.py``): every path the tool writes is new, empty, or a previous run of the same job; it
never replaces a file the tool did not write, never writes into or over an input, and ``--overwrite`` replaces a
previous run whole."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from refusal import mounted, paragraph, refused, temps
from tiny import save_tiny, tree_hashes, write_tiny_suite

from safety_prune.cli import main
from safety_prune.errors import OutputError


def _audit(model: Path, suite: Path, out: Path, *extra: str) -> list[str]:
    return ["audit", "--model", str(model), "--probe", str(suite), "--out", str(out), "--batch-size", "4",
            "--limit", "3", *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a suite with its data, a user's file and folder, and two finished audit runs."""
    root = tmp_path_factory.mktemp("world")
    save_tiny("llama", root / "model")
    suite = Path(write_tiny_suite(root / "suite"))
    (root / "user").mkdir()
    (root / "user" / "notes.txt").write_text("my notes\n")
    for name in ("run_a", "run_b"):
        assert main(_audit(root / "model", suite, root / name)) == 0
    return root, suite


def _inputs(root: Path) -> list[Path]:
    return [root / "model", root / "suite", root / "user"]


# --------------------------------------------------------------------------------------------- unit level

def test_a_folder_with_foreign_files_is_refused_even_with_overwrite(tmp_path):
    from safety_prune.run import check_out_dir

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "data.csv").write_text("a,b\n")
    with pytest.raises(OutputError, match=r"no safety_prune run wrote.*data.csv"):
        check_out_dir(tmp_path / "out", True, "audit")
    assert (tmp_path / "out" / "data.csv").read_text() == "a,b\n"


def test_run_files_without_results_are_not_a_run(tmp_path):
    from safety_prune.run import check_out_dir

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "samples.jsonl").write_text("{}\n")
    with pytest.raises(OutputError, match=r"no readable results.json"):
        check_out_dir(tmp_path / "out", True, "audit")


def test_overwrite_replaces_only_a_run_of_the_same_job(tmp_path):
    from safety_prune.run import check_out_dir

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text('{"job": "correct"}')
    with pytest.raises(OutputError, match=r"holds a `correct` run.*only a previous `audit` run"):
        check_out_dir(tmp_path / "out", True, "audit")
    assert check_out_dir(tmp_path / "out", True, "correct") == tmp_path / "out"


def test_an_output_folder_holding_an_input_is_refused(tmp_path):
    from safety_prune.run import check_not_over_inputs

    data = tmp_path / "d" / "prompts.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    with pytest.raises(OutputError, match=r"holds .*prompts.jsonl, an input of this run"):
        check_not_over_inputs(tmp_path / "d", [str(data), "asset:default"], "--out")
    with pytest.raises(OutputError, match=r"an input of this run"):
        check_not_over_inputs(tmp_path, [str(data)], "--out")
    check_not_over_inputs(tmp_path / "elsewhere", [str(data)], "--out")


# ------------------------------------------------------------------------------------- H1: report --compare

@pytest.mark.parametrize("victim", ["user/notes.txt", "model/config.json", "model/model.safetensors",
                                    "suite/prompts.txt", "run_a/results.json"])
def test_compare_never_overwrites_a_file_it_did_not_write(world, capsys, victim):
    root, _ = world
    msg = refused(capsys, ["report", "--compare", str(root / "run_a"), str(root / "run_b"), "--out",
                           str(root / victim)], [*_inputs(root), root / "run_a", root / "run_b"], [root])
    assert "never replaced" in msg or "which is part of that run" in msg


def test_compare_never_writes_into_the_model_folder(world, capsys):
    root, _ = world
    msg = refused(capsys, ["report", "--compare", str(root / "run_a"), str(root / "run_b"), "--out",
                           str(root / "model" / "cmp.html")], _inputs(root), [root])
    assert "model folder" in msg
    assert not (root / "model" / "cmp.html").exists()


def test_compare_may_replace_its_own_page(world, capsys):
    root, _ = world
    page = root / "cmp" / "page.html"
    page.parent.mkdir(exist_ok=True)
    args = ["report", "--compare", str(root / "run_a"), str(root / "run_b"), "--out", str(page)]
    assert main(args) == 0
    first = page.read_bytes()
    assert main(args) == 0, capsys.readouterr().err
    assert page.read_bytes() == first


# ------------------------------------------------------------------------------- H2: --out over the suite

def test_out_in_the_suite_folder_is_refused_even_with_overwrite(tmp_path, capsys):
    save_tiny("llama", tmp_path / "model")
    suite = Path(write_tiny_suite(tmp_path / "dir"))
    (tmp_path / "dir" / "samples.jsonl").write_text('{"text": "my own prompt"}\n')
    msg = refused(capsys, _audit(tmp_path / "model", suite, tmp_path / "dir", "--overwrite"),
                  [tmp_path / "dir", tmp_path / "model"], [tmp_path])
    assert "no safety_prune run wrote" in msg


def test_out_a_previous_run_that_holds_the_suites_data_is_refused(world, tmp_path, capsys):
    root, _ = world
    run = tmp_path / "run"
    shutil.copytree(root / "run_a", run)
    suite = Path(write_tiny_suite(tmp_path / "s"))
    text = suite.read_text().replace("path: prompts.txt", f"path: {run / 'samples.jsonl'}, field: prompt")
    suite.write_text(text)
    before = tree_hashes(run)  # contents only: the writability probe of --out may touch the folder's mtime
    msg = refused(capsys, _audit(root / "model", suite, run, "--overwrite"), [root / "model"], [tmp_path])
    assert "an input of this run" in msg
    assert tree_hashes(run) == before


# ----------------------------------------------------------- M9: --overwrite replaces a previous run whole

def test_overwrite_leaves_none_of_the_previous_run(world, tmp_path):
    root, suite = world
    run = tmp_path / "run"
    shutil.copytree(root / "run_a", run)
    (run / "masks.json").write_text("{}")  # a run file the new audit does not write
    (run / "generations-0123456789abcdef.jsonl").write_text("")  # a cache of other inputs
    assert main(_audit(root / "model", suite, run, "--overwrite")) == 0
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (root / "run_a").iterdir())


# ------------------------------------------------------------------------------- L2: --save-model vs --out

@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_save_model_and_out_may_not_overlap(world, tmp_path, capsys, where):
    root, suite = world
    out = tmp_path / "out"
    save = {"same": out, "inside": out / "model", "around": tmp_path}[where]
    argv = ["correct", "--model", str(root / "model"), "--probe", str(suite), "--out", str(out), "--k", "1",
            "--save-model", str(save)]
    msg = refused(capsys, argv, _inputs(root), [tmp_path])
    assert "overlap" in msg or "not an empty folder" in msg
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------------------ property test

def test_no_input_or_user_file_ever_changes(world, tmp_path, capsys):
    """Every write flag pointed at every kind of existing location: inputs and the user's files stay
    byte-identical whatever the outcome (a previous run of the same job may be replaced, and only that)."""
    root, suite = world
    prev = tmp_path / "prev"
    shutil.copytree(root / "run_a", prev)
    targets = {"prompt file": root / "suite" / "prompts.txt", "suite file": suite, "suite folder": root / "suite",
               "model folder": root / "model", "model config": root / "model" / "config.json",
               "user file": root / "user" / "notes.txt", "user folder": root / "user", "previous run": prev}
    flags = {
        "--out": lambda t: _audit(root / "model", suite, t, "--overwrite"),
        "--save-model": lambda t: ["correct", "--model", str(root / "model"), "--probe", str(suite), "--out",
                                   str(tmp_path / "c"), "--k", "1", "--save-model", str(t), "--force",
                                   "--overwrite"],
        "report --out": lambda t: ["report", "--compare", str(root / "run_a"), str(root / "run_b"), "--out",
                                   str(t)],
    }
    protected = _inputs(root)
    before = tree_hashes(*protected)
    outcomes = {}
    for (flag, argv_of), (name, target) in itertools.product(flags.items(), targets.items()):
        code = main(argv_of(target))
        capsys.readouterr()
        outcomes[flag, name] = code
        assert tree_hashes(*protected) == before, (flag, name)
    # a previous run may be replaced by a run of its job, or get a comparison page; everything else is refused
    allowed = {("--out", "previous run"), ("report --out", "previous run")}
    assert {key for key, code in outcomes.items() if code == 0} == allowed, outcomes
    assert all(code == 2 for key, code in outcomes.items() if key not in allowed), outcomes


# ------------------------------------------------------------------- M1/M2: a full disk is a clear error

def test_a_full_out_disk_is_one_paragraph_and_nothing_is_kept(world, tmp_path, capsys):
    root, suite = world
    with mounted(tmp_path / "full", size="48k") as full:
        code = main(_audit(root / "model", suite, full))
        msg = paragraph(capsys.readouterr().err)
        assert code == 2
        assert "No space left on device" in msg and "Nothing of it was kept" in msg
        assert not any(full.iterdir())


def test_a_full_save_model_disk_is_one_paragraph_and_nothing_is_kept(world, tmp_path, capsys):
    root, suite = world
    with mounted(tmp_path / "full", size="48k") as full:
        code = main(["correct", "--model", str(root / "model"), "--probe", str(suite), "--out", str(tmp_path / "c"),
                     "--k", "1", "--force", "--batch-size", "4", "--limit", "3", "--stability", "0",
                     "--save-model", str(full / "m")])
        msg = paragraph(capsys.readouterr().err)
        assert code == 2
        assert "--save-model" in msg and "Nothing of it was kept" in msg
        assert not any(full.iterdir())
    assert not (tmp_path / "c").exists() and not temps(tmp_path)


# ---------------------------------------------------------------- L1, L8: killed saves and long names

def test_a_killed_save_leaves_nothing_that_blocks_the_rerun(tmp_path):
    """SIGKILL cannot clean up: the hidden temp of a dead process inside an empty --save-model does not make
    the folder "not empty"."""
    import os
    import subprocess
    import sys

    from safety_prune.io import temp_prefix
    from safety_prune.jobs.common import check_save_target

    target = tmp_path / "saved"
    target.mkdir()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    (target / (temp_prefix(target).replace(f"-{os.getpid()}.", f"-{dead}.") + "abc.tmp")).mkdir()
    assert check_save_target(str(target), None, tmp_path / "out") == target.resolve()


def test_a_long_out_name_is_accepted(world, tmp_path):
    root, suite = world
    out = tmp_path / ("r" * 240)
    assert main(_audit(root / "model", suite, out)) == 0
    assert (out / "results.json").is_file() and not temps(tmp_path)


# --------------------------------------------------------------------------- L9: an unreachable hub

def test_an_unreachable_hub_fails_at_once_naming_it(monkeypatch):
    from huggingface_hub import constants

    from safety_prune.errors import ModelLoadError
    from safety_prune.models import load_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelLoadError, match=r"hub \(http://127.0.0.1:9\) cannot be reached.*pass its folder"):
        load_model("no-such-org/no-such-model")
