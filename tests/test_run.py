"""The write rule (``run.py``): every path the tool writes is new, empty, or a previous run of the same job; it
never replaces a file the tool did not write, never writes into or over an input, and ``--overwrite`` replaces a
previous run whole."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from refusal import ROOT, job_argv, mounted, paragraph, read_only_folder, refused, temps
from tiny import save_tiny, tiny_variant, tree_hashes, write_tiny_suite

from safety_prune.cli import main
from safety_prune.errors import ModelLoadError, OutputError
from safety_prune.models import load_model


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

    from safety_prune.models import load_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelLoadError, match=r"hub \(http://127.0.0.1:9\) cannot be reached.*pass its folder"):
        load_model("no-such-org/no-such-model")


def test_the_manifest_records_operator_git_state_and_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the page shows must be produced by the jobs: ``run.manifest`` records it."""
    import os

    from safety_prune.run import manifest

    monkeypatch.setenv("SAFETY_PRUNE_OPERATOR", "reviewer-7")
    got = manifest(seed=0, argv=["x"], data_files={}, model_files={}, started=0.0)
    assert got["operator"] == "reviewer-7"
    assert got["git_dirty"] in (True, False, None)  # None only outside a git checkout
    hw = got["hardware"]
    assert hw["cpu_count"] == os.cpu_count() and isinstance(hw["cpu"], str) and hw["cpu"]
    assert hw["memory_gib"] > 0 and hw["torch_threads"] >= 1
    import torch

    assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and hw["cpu_capability"]
    assert hw["mkl_cbwr"] == os.environ.get("MKL_CBWR")  # the tests run in strict mode (conftest.py)


@pytest.mark.parametrize("where", ["mount point", "symlink to a mount point"])
def test_out_on_another_filesystem(tiny_setup, tmp_path, capsys, where):
    """A full audit whose --out is a mount point (or a link to one) lands there; before, the final os.replace from a
    staging folder beside --out failed with EXDEV after the whole run and left the staging folder behind."""
    _, model, suite = tiny_setup
    before = tree_hashes(model, suite.parent, mtimes=True)
    with mounted(tmp_path / "mnt") as mnt:
        out = mnt
        if where != "mount point":
            out = tmp_path / "link"
            out.symlink_to(mnt)
        code = main(job_argv("audit", model, suite, out))
        err = capsys.readouterr().err
        assert code == 0, err
        assert {"results.json", "report.html", "samples.jsonl"} <= {p.name for p in mnt.iterdir()}
        json.loads((mnt / "results.json").read_text())
        assert not temps(tmp_path, mnt)
    assert tree_hashes(model, suite.parent, mtimes=True) == before


def test_save_model_on_a_mount_point(tiny_setup, tmp_path, capsys):
    """--save-model at a mount point: before, atomic_dir's rmdir of the target failed with EBUSY at the very end."""
    _, model, suite = tiny_setup
    with mounted(tmp_path / "saved") as saved:
        code = main(job_argv("compress", model, suite, tmp_path / "run", "--save-model", str(saved)))
        err = capsys.readouterr().err
        assert code == 0, err
        assert (saved / "model.safetensors").is_file() and (saved / "README.md").is_file()
        assert not temps(tmp_path, saved)
        lm = load_model(str(saved))
        assert lm.arch.family == "llama"


def _bad_target(kind: str, tmp_path: Path, stack: contextlib.ExitStack) -> Path:
    if kind == "dangling symlink":
        link = tmp_path / "dangling"
        link.symlink_to(tmp_path / "gone")
        return link
    if kind == "empty read-only folder":
        return stack.enter_context(read_only_folder(tmp_path / "ro"))
    if kind == "under a file":
        (tmp_path / "a_file").write_text("x")
        return tmp_path / "a_file" / "run"
    assert kind == "read-only parent"
    return stack.enter_context(read_only_folder(tmp_path / "ro")) / "run"


BAD_TARGETS = ["dangling symlink", "empty read-only folder", "under a file", "read-only parent"]


@pytest.mark.parametrize("kind", BAD_TARGETS)
def test_unwritable_out_is_refused_before_any_work(tiny_setup, tmp_path, capsys, no_model_load, kind):
    _, model, suite = tiny_setup
    with contextlib.ExitStack() as stack:
        out = _bad_target(kind, tmp_path, stack)
        msg = refused(capsys, job_argv("audit", model, suite, out), [model, suite.parent], [tmp_path])
        assert "--out" in msg
        assert not (out.exists() and out.is_dir() and any(out.iterdir()))


@pytest.mark.parametrize("kind", BAD_TARGETS)
def test_unwritable_save_model_is_refused_before_any_work(tiny_setup, tmp_path, capsys, no_model_load, kind):
    _, model, suite = tiny_setup
    with contextlib.ExitStack() as stack:
        target = _bad_target(kind, tmp_path, stack)
        argv = job_argv("correct", model, suite, tmp_path / "run", "--save-model", str(target))
        msg = refused(capsys, argv, [model, suite.parent], [tmp_path])
        assert "--save-model" in msg
        assert not (tmp_path / "run").exists()


def test_failed_commit_leaves_no_staging_and_says_so(tmp_path, monkeypatch):
    """The commit is part of the cleanup: a move that fails (here every rename: a full disk) removes the staging
    folder and raises OutputError. Before, the OSError escaped as a traceback and the staging folder stayed."""
    from safety_prune import run
    from safety_prune.errors import OutputError

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="could not be moved into --out"), run.staged(tmp_path / "run") as st:
        st.path("results.json").write_text("{}")
        monkeypatch.setattr(os, "replace", full_disk)
    assert not (tmp_path / "run").exists() and not temps(tmp_path)


def test_non_utf8_out_is_refused_up_front(tiny_setup, tmp_path, capsys, no_model_load):
    """Before: the run went to the end and failed writing report.html (the path in the command line)."""
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    msg = refused(capsys, job_argv("audit", tiny_setup[1], tiny_setup[2], out),
                   [tiny_setup[1], tiny_setup[2].parent], [tmp_path])
    assert "not UTF-8" in msg and "--out" in msg
    assert not Path(out).exists()


def test_out_inside_the_model_folder_is_refused(tiny_setup, tmp_path, capsys, no_model_load):
    """As --save-model there already was; before, the run wrote into the input model's folder."""
    model = tiny_variant(tiny_setup, tmp_path)
    msg = refused(capsys, job_argv("audit", model, tiny_setup[2], model / "run"),
                   [model, tiny_setup[2].parent], [tmp_path])
    assert "inside the input model folder" in msg and "--out" in msg
    assert not (model / "run").exists()


def test_late_interrupt_says_the_run_was_kept(tiny_setup, tmp_path, capsys, monkeypatch):
    """Ctrl-C after the run was written: before, the message claimed 'no partial output was kept'."""
    from safety_prune.jobs import audit as audit_job

    real = audit_job.audit

    def audit_then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(audit_job, "audit", audit_then_interrupt)
    out = tmp_path / "run"
    assert main(job_argv("audit", tiny_setup[1], tiny_setup[2], out)) == 130
    msg = paragraph(capsys.readouterr().err)
    assert str(out) in msg and "complete and kept" in msg and "no partial output" not in msg
    assert (out / "results.json").is_file() and not temps(tmp_path)


def test_interrupt_during_the_commit_waits_for_it(tmp_path, monkeypatch):
    """SIGINT while the run moves into --out is held until the move is complete, then raised. Before, it cut the
    commit short: --out held part of the run."""
    from safety_prune import io, run

    out = tmp_path / "run"
    out.mkdir()  # an existing folder: the files move in one by one
    real, sent = os.replace, []

    def interrupted_replace(src, dst):
        if not sent:
            sent.append(signal.SIGINT)
            # to this (the main) thread: os.kill(getpid) may hand a process signal to one of torch's worker
            # threads, and then the main thread sees it only later (this test flaked in a full run that way)
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.05)  # the handler would run here without the deferral
        real(src, dst)

    # Python's own SIGINT handler, whatever an earlier test in this process left installed (in a full run the
    # signal was once swallowed here by a handler that another test left behind; not yet traced)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt), run.staged(out) as st:
        for name in ("report.html", "results.json", "samples.jsonl"):
            st.path(name).write_text(name)
        monkeypatch.setattr(os, "replace", interrupted_replace)
    signal.signal(signal.SIGINT, previous)
    assert sent and sorted(p.name for p in out.iterdir()) == ["report.html", "results.json", "samples.jsonl"]
    assert io.committed()[-1] == out and not temps(tmp_path)


_STALL = ("import sys, time\n"
          "import safety_prune.jobs.audit as a\n"
          "a.build_references = lambda *x, **k: time.sleep(300)\n"  # stall once the baseline is staged
          "from safety_prune.cli import main\n"
          "sys.exit(main(sys.argv[1:]))")


def test_sigterm_cleans_up_like_sigint(tiny_setup, tmp_path):
    """Before: SIGTERM killed the process at once and left the staging folder beside --out."""
    _, model, suite = tiny_setup
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _STALL, *job_argv("audit", model, suite, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".run.*.tmp/samples.jsonl")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the run never staged its first file"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert code == 143, err
    msg = paragraph(err)
    assert "terminated" in msg and "no partial output was kept" in msg
    assert not out.exists() and not temps(tmp_path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_saved_model_and_run_follow_the_umask(tiny_setup, tmp_path, capsys):
    """Before: --save-model folders kept mkdtemp's 0700."""
    _, model, suite = tiny_setup
    saved, out = tmp_path / "saved", tmp_path / "run"
    assert main(job_argv("compress", model, suite, out, "--save-model", str(saved))) == 0, capsys.readouterr().err
    want = 0o777 & ~_umask()
    assert stat.S_IMODE(saved.stat().st_mode) == want
    assert stat.S_IMODE(out.stat().st_mode) == want
