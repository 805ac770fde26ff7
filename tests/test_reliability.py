"""Issue 7, reliability: atomic outputs (also under SIGKILL), determinism, the memory pre-flight, and
fuzzed suites and prompt files that end in a result or a SafetyPruneError, never another exception."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from safety_prune import sources
from safety_prune.cli import main
from safety_prune.errors import ConfigError, SafetyPruneError
from safety_prune.io import atomic_dir, sweep_stale_temps
from safety_prune.jobs.correct import correct
from safety_prune.jobs.options import CorrectOptions
from safety_prune.models import load_model
from safety_prune.preflight import check_attribution_memory, estimate_attribution_memory
from safety_prune.suite import load_suite

PKG = Path(__file__).resolve().parent.parent / "safety_prune"


# ------------------------------------------------------------------------------------- atomic outputs

_ATOMIC = {"atomic_path", "atomic_dir"}


def _name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _writes_a_file(call: ast.Call) -> bool:
    """``x.write_text``, ``x.write_bytes``, ``x.save_pretrained``, ``save_file``, ``torch.save`` and
    ``open``/``x.open`` with a writing mode: calls that create a file at the path they are given."""
    f, name = call.func, _name(call.func)
    if isinstance(f, ast.Attribute) and name in ("write_text", "write_bytes", "save_pretrained"):
        return True
    if name == "save_file" or (name == "save" and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                               and f.value.id in ("torch", "np", "numpy")):
        return True
    if name == "open":
        pos = 1 if isinstance(f, ast.Name) else 0
        mode = call.args[pos] if len(call.args) > pos else next((k.value for k in call.keywords if k.arg == "mode"),
                                                                None)
        return isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
    return False


def _direct_writes(path: Path) -> list[str]:
    found: list[str] = []

    def visit(node: ast.AST, atomic: bool) -> None:
        if isinstance(node, ast.With):
            atomic = atomic or any(isinstance(i.context_expr, ast.Call) and _name(i.context_expr.func) in _ATOMIC
                                   for i in node.items)
        if isinstance(node, ast.Call) and _writes_a_file(node) and not atomic:
            found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {ast.unparse(node)[:100]}")
        for child in ast.iter_child_nodes(node):
            visit(child, atomic)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_every_file_write_is_atomic():
    """Each write inside safety_prune/ happens in a ``with atomic_path/atomic_dir`` block (temp + rename)."""
    found = [w for p in sorted(PKG.rglob("*.py")) for w in _direct_writes(p)]
    assert not found, "direct writes to final paths; wrap them in io.atomic_path / io.atomic_dir:\n" + "\n".join(found)


def test_sigkill_during_save_model_leaves_all_or_nothing(tiny_setup, tmp_path):
    _, model, suite = tiny_setup
    saved, out = tmp_path / "saved", tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PKG.parent), os.environ.get("PYTHONPATH", "")])}
    stall = ("import sys, time, transformers\n"  # the save stalls after the weights, before the tokenizer
             "transformers.PreTrainedTokenizerBase.save_pretrained = lambda *a, **k: time.sleep(300)\n"
             "from safety_prune.cli import main\nsys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", stall, "correct", "--model", str(model), "--probe",
                             str(suite), "--out", str(out), "--k", "2", "--batch-size", "4", "--force", "--save-model",
                             str(saved)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("*/model.safetensors")):  # the first file of the save is written
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the save never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert not saved.exists() and not out.exists()  # nothing half-written at either final path
    stale = list(tmp_path.glob(".saved.*.tmp"))
    assert len(stale) == 1  # SIGKILL runs no cleanup; the hidden temp sibling is all that is left
    with atomic_dir(saved) as tmp:  # the next save to the same target (correct/compress --save-model)
        (tmp / "config.json").write_text("{}")
    assert not stale[0].exists() and (saved / "config.json").is_file()


def test_live_process_temp_is_kept(tmp_path):
    """A temp sibling of a process that still runs (here: ours) is a save in progress and is never swept."""
    with atomic_dir(tmp_path / "a") as tmp:
        sweep_stale_temps(tmp_path / "a")
        assert tmp.is_dir()
    assert (tmp_path / "a").is_dir() and not tmp.exists()


# -------------------------------------------------------------------------------------- determinism

def _strip_timings(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text())
    for key in ("started_unix", "duration_s", "stages_s"):
        del res["manifest"][key]
    return res


def test_same_seed_same_outputs(tiny_setup, tmp_path):
    _, model, suite = tiny_setup
    for name in ("a", "b"):
        correct(str(model), str(suite), tmp_path / name, options=CorrectOptions(k=2, batch_size=4, seed=3),
                argv=["safety-prune", "correct", "--k", "2", "--seed", "3"])
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "masks.json").read_bytes() == (b / "masks.json").read_bytes()
    assert (a / "samples.jsonl").read_bytes() == (b / "samples.jsonl").read_bytes()
    assert _strip_timings(a) == _strip_timings(b)


# ------------------------------------------------------------------------------ memory pre-flight

def test_estimate_scales_with_batch_and_units(tiny_setup):
    lm = load_model(str(tiny_setup[1]))
    one = estimate_attribution_memory(lm.model, 1, 64, ("neuron", "head"))
    four = estimate_attribution_memory(lm.model, 4, 64, ("neuron", "head"))
    weight = estimate_attribution_memory(lm.model, 1, 64, ("weight",))
    assert four.activations == 4 * one.activations and four.weights == one.weights
    assert weight.accumulators > one.accumulators
    recompute = estimate_attribution_memory(lm.model, 4, 64, ("neuron", "head"), gradient_checkpointing=True)
    assert recompute.activations < four.activations
    assert check_attribution_memory(lm.model, 4, 64, ("neuron", "head"), four.total) == four
    with pytest.raises(ConfigError, match="memory free on this machine"), \
            mock.patch("safety_prune.preflight.available_memory", return_value=1):
        check_attribution_memory(lm.model, 4, 64, ("neuron", "head"), None)


@pytest.mark.parametrize("command, extra", [("audit", []), ("correct", ["--k", "2", "--save-model", "SAVED"])])
def test_max_memory_refuses_before_any_output(tiny_setup, tmp_path, capsys, command, extra):
    _, model, suite = tiny_setup
    out = tmp_path / "run"
    extra = [str(tmp_path / "saved") if a == "SAVED" else a for a in extra]
    code = main([command, "--model", str(model), "--probe", str(suite), "--out", str(out), "--batch-size", "64",
                 "--max-memory", "200KB", *extra])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "Attribution needs about" in err and "--max-memory limit of 200.0 KB" in err
    assert "--batch-size" in err and "--dtype bfloat16" in err
    assert list(tmp_path.iterdir()) == []  # no run dir, no staging folder, no saved model


# ------------------------------------------------------------------------------------------ fuzzing

_FUZZ = settings(max_examples=150, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_SUITE_KEYS = ["name", "description", "undesired", "split", "eval", "general", "scorer", "generation",
               "chat_template", "perplexity", "max_prompt_tokens", "thresholds", "reference", "source", "path",
               "asset", "hub", "field", "format", "eval_fraction", "seed", "validation_words", "test_words",
               "threshold", "options", "max_new_tokens", "do_sample", "num_samples", "temperature", "top_p",
               "batch_size", "max_length", "stride", "min_tokens", "toxicity_rate", "undesired_min", "general_n",
               "validation_fraction", "samples_per_prompt", "target", "benign_n", "contrast", "combine", "guard",
               "behaviour", "behaviour_rate", "secondary"]
_leaf = (st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
         | st.sampled_from(["prompts.txt", "general.txt", "txt", "jsonl", "nope.csv", "/dev/null", "..", "gensim-lee"]))
_tree = st.recursive(_leaf, lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.sampled_from(_SUITE_KEYS) | st.text(max_size=5) | st.integers(-2, 2),
                                     kids, max_size=5),
                     max_leaves=25)

_source = _leaf | st.dictionaries(st.sampled_from(["path", "asset", "hub", "field", "format", "limit", "split"])
                                  | st.integers(-2, 2) | st.text(max_size=3), _leaf, max_size=4)
_suite_like = st.fixed_dictionaries({}, optional={
    **{k: _tree for k in _SUITE_KEYS[:13]},
    "undesired": st.fixed_dictionaries({}, optional={"source": _source, "hub_alternative": _source}),
    "eval": st.fixed_dictionaries({}, optional={"source": _source}),
    "general": st.fixed_dictionaries({"source": _source}, optional={"test_words": _leaf, "validation_words": _leaf}),
})


def _offline():
    """No network in fuzzing: a hub source fails as it would offline, an asset as a missing cache entry."""
    return mock.patch("datasets.load_dataset", side_effect=ConnectionError("offline (fuzz test)"))


def _load_or_clean_error(path: Path) -> None:
    try:
        with _offline(), mock.patch.object(sources.assets, "fetch_many",
                                           side_effect=sources.assets.AssetError("no asset cache (fuzz test)")):
            load_suite(str(path))
    except SafetyPruneError:
        pass


@_FUZZ
@given(data=_tree | _suite_like)
@example(data={"undesired": {"source": {0: None, "": None}}})  # found by this test: sorted() of mixed key types
@example(data={"undesired": {"source": {"path": "prompts.txt", 0: None, "x": None}}})
def test_fuzz_suite_structures(tiny_setup, data):
    folder = tiny_setup[2].parent
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=folder, delete=False) as fh:
        yaml.safe_dump(data, fh, allow_unicode=True)
    try:
        _load_or_clean_error(Path(fh.name))
    finally:
        os.unlink(fh.name)


_yamlish = st.lists(st.sampled_from(["name: x", "undesired:", "  source: {path: prompts.txt}", "general:",
                                     "  source: {path: general.txt}", "- a", "key: [1, 2", "{", "}", ": :", "&a x",
                                     "*a", "!!python/object:os.system x", "\t", "reference: {general_n: 0}",
                                     "split: {eval_fraction: 1.0}", "%YAML 9.9", "---", "'unterminated"]) | st.text(),
                    max_size=12).map("\n".join)


@_FUZZ
@given(text=_yamlish)
def test_fuzz_suite_text(tiny_setup, text):
    folder = tiny_setup[2].parent
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml", dir=folder, delete=False) as fh:
        fh.write(text.encode("utf-8", "surrogatepass"))
    try:
        _load_or_clean_error(Path(fh.name))
    finally:
        os.unlink(fh.name)


@_FUZZ
@given(suffix=st.sampled_from([".txt", ".jsonl", ".csv"]),
       body=st.binary(max_size=300) | st.lists(st.sampled_from([b'{"text": "a"}', b'{"text": 1}', b"[1]", b"null",
                                                                b'{"text": {"x": 1}}', b"text,b", b'"a,b', b"\xff\xfe",
                                                                b"", b"a\x00b", b'{"text": "\\ud800"}', b",,,"]),
                                                max_size=8).map(b"\n".join),
       errors=st.sampled_from(["strict", "replace"]))
def test_fuzz_prompt_files(tmp_path, suffix, body, errors):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(body)
    try:
        texts = sources.load_texts({"path": str(path)}, encoding_errors=errors).texts
    except SafetyPruneError:
        return
    assert texts and all(isinstance(t, str) and t for t in texts)


def test_killed_run_staging_is_swept(tmp_path):
    """A staging folder whose process is gone (as after SIGKILL) is removed by the next run into that --out."""
    from safety_prune.run import Staging

    out = tmp_path / "run"
    code = f"from pathlib import Path; from safety_prune.run import Staging; print(Staging(Path({str(out)!r})).dir)"
    left = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}).stdout.strip())
    assert left.is_dir()  # the child exited without cleaning up
    live = Staging(out)
    assert not left.exists() and live.dir.is_dir()
    live.discard()
