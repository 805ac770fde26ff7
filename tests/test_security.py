"""Issue 7, security: inputs are never modified, hostile model and prompt files fail clearly, and neither
pickles nor a model's own Python code run by default. Report escaping lives in tests/test_report.py
(test_hostile_text_is_escaped, test_browser_shows_payloads_as_text_and_fetches_nothing)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tracemalloc
from pathlib import Path

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer, tree_hashes, write_tiny_suite

from safety_prune.cli import main
from safety_prune.errors import DataSourceError, ModelLoadError
from safety_prune.evaluation.behaviour import truncate_prompts
from safety_prune.models import load_model
from safety_prune.suite import MAX_PROMPT_CHARS, load_suite


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------ inputs are never modified

def test_inputs_never_modified(tiny_setup, tmp_path, capsys):
    _, model, suite = tiny_setup
    before = tree_hashes(model, suite.parent)
    common = ("--model", str(model), "--probe", str(suite), "--batch-size", "4")
    assert _cli(capsys, "audit", *common, "--out", str(tmp_path / "audit"))[0] == 0
    assert _cli(capsys, "correct", *common, "--out", str(tmp_path / "correct"), "--k", "2",
                "--save-model", str(tmp_path / "corrected"), "--force")[0] == 0
    assert _cli(capsys, "compress", *common, "--out", str(tmp_path / "compress"), "--method", "magnitude",
                "--save-model", str(tmp_path / "compressed"))[0] == 0
    assert (tmp_path / "corrected" / "model.safetensors").is_file()
    assert (tmp_path / "compressed" / "model.safetensors").is_file()
    assert tree_hashes(model, suite.parent) == before


# ---------------------------------------------------------------------------------- hostile model files
# config.json that is not JSON: tests/test_models.py::test_config_not_json

def _copy_model(tiny_setup, tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(tiny_setup[1], dst)
    return dst


def test_truncated_safetensors_names_the_file(tiny_setup, tmp_path):
    m = _copy_model(tiny_setup, tmp_path)
    weights = m / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is not a readable safetensors file"):
        load_model(str(m))


def test_corrupt_gguf_names_the_file(tmp_path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(4092))  # right magic, garbage header
    with pytest.raises(ModelLoadError, match=r"x\.gguf is not a readable GGUF file"):
        load_model(str(gguf))


def test_missing_tokenizer_is_clear(tiny_setup, tmp_path):
    m = _copy_model(tiny_setup, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (m / name).unlink()
    with pytest.raises(ModelLoadError, match=r"No usable tokenizer.*tokenizer\.json"):
        load_model(str(m))


class _Marker:
    """Unpickling this calls ``Path.touch`` on the marker: proof that the pickle ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_malicious_pickle_never_runs(tiny_setup, tmp_path):
    m = _copy_model(tiny_setup, tmp_path)
    (m / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    state = tiny_model("llama").state_dict()
    state["model.evil"] = _Marker(marker)
    torch.save(state, m / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_model(str(m))
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin .*refused"):
        load_model(str(m), allow_pickle=True)
    assert not marker.exists()


def test_remote_code_is_not_run(tiny_setup, tmp_path):
    m = _copy_model(tiny_setup, tmp_path)
    marker = tmp_path / "PWNED"
    (m / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                               "from transformers import LlamaConfig as EvilConfig\n"
                               "from transformers import LlamaForCausalLM as EvilModel\n"
                               "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    cfg = json.loads((m / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (m / "config.json").write_text(json.dumps(cfg))
    tok_cfg = json.loads((m / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (m / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    lm = load_model(str(m))
    assert type(lm.model).__module__.startswith("transformers.models.llama")
    assert not marker.exists()


# -------------------------------------------------------------------------------- hostile prompt files

def test_huge_prompt_file_is_capped(tmp_path, caplog):
    suite = Path(write_tiny_suite(tmp_path))
    lines = [f"prompt number {i} the quick fox" for i in range(100_000)]
    lines[500] = "the quick brown fox " * 500_000  # one 10 MB line
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")
    caplog.set_level(logging.WARNING)
    tracemalloc.start()
    try:
        s = load_suite(str(suite))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80e6, f"loading a 13 MB prompt file peaked at {peak / 1e6:.0f} MB of Python memory"
    prompts = s.eval_prompts() + s.validation_prompts() + s.undesired_reference()
    assert len(prompts) == 100_000 and max(map(len, prompts)) == MAX_PROMPT_CHARS
    out = truncate_prompts(tiny_tokenizer(), prompts, s.max_prompt_tokens)
    cut = [o for o, p in zip(out, prompts, strict=True) if o != p]
    assert len(out) == len(prompts) and len(cut) == 1
    assert len(tiny_tokenizer()(cut[0], add_special_tokens=False)["input_ids"]) <= s.max_prompt_tokens
    assert f"cut 1 prompt(s) longer than {MAX_PROMPT_CHARS} characters" in caplog.text
    assert f"1 of 100000 prompts were longer than max_prompt_tokens={s.max_prompt_tokens}" in caplog.text


def _bad_utf8_suite(tmp_path: Path) -> Path:
    suite = Path(write_tiny_suite(tmp_path / "suite"))
    prompts = suite.parent / "prompts.txt"
    lines = prompts.read_bytes().splitlines()
    lines[2] = b"caf\xe9 latin-1 prompt"
    prompts.write_bytes(b"\n".join(lines) + b"\n")
    return suite


def test_non_utf8_prompts_name_file_and_line(tmp_path, capsys):
    suite = _bad_utf8_suite(tmp_path)
    with pytest.raises(DataSourceError, match=r"prompts\.txt:3: not valid UTF-8"):
        load_suite(str(suite))
    assert any("caf\ufffd latin-1 prompt" in p for p in
               load_suite(str(suite), encoding_errors="replace").eval_prompts()
               + load_suite(str(suite), encoding_errors="replace").validation_prompts()
               + load_suite(str(suite), encoding_errors="replace").undesired_reference())
    code, err = _cli(capsys, "audit", "--model", "unused", "--probe", str(suite), "--out", str(tmp_path / "r"))
    assert code != 0 and "prompts.txt:3: not valid UTF-8" in err and "Traceback" not in err


def test_encoding_errors_flag_reaches_the_suite(tiny_setup, tmp_path, capsys):
    """With --encoding-errors replace the suite loads, so the run gets as far as the memory pre-flight."""
    suite = _bad_utf8_suite(tmp_path)
    for command in ("audit", "correct"):
        code, err = _cli(capsys, command, "--model", str(tiny_setup[1]), "--probe", str(suite),
                         "--out", str(tmp_path / command), "--encoding-errors", "replace", "--max-memory", "1KB")
        assert code != 0 and "--max-memory limit" in err and "UTF-8" not in err
