import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from refusal import job_argv, refused
from tiny import FAMILIES, save_tiny, tiny_config, tiny_model, tiny_tokenizer, tiny_variant, write_tiny_suite
from transformers import AutoModelForCausalLM

from safety_prune.cli import main
from safety_prune.errors import ConfigError, ModelLoadError, UnsupportedArchitectureError
from safety_prune.families import geometry
from safety_prune.models import load_model


@pytest.mark.parametrize("family", FAMILIES)
def test_load_tiny_folder(tmp_path, family):
    save_tiny(family, tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.arch.family == family
    ids = lm.tokenizer("the fox", return_tensors="pt").input_ids
    ref = tiny_model(family)
    torch.testing.assert_close(lm.model(ids).logits, ref(ids).logits)
    geo = geometry(lm.model)
    assert geo.n_layers == 2 and geo.n_neurons > 0 and geo.n_heads == 4
    assert any(k.endswith("model.safetensors") for k in lm.weights_sha256)


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_unsupported_architecture_lists_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(UnsupportedArchitectureError) as exc:
        load_model(str(tmp_path))
    for fam in FAMILIES:
        assert fam in str(exc.value)


def test_config_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json is not valid JSON"):
        load_model(str(tmp_path))


def test_pickle_weights_refused(tmp_path):
    save_tiny("llama", tmp_path)
    model = tiny_model("llama")
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_model(str(tmp_path))
    lm = load_model(str(tmp_path), allow_pickle=True)
    assert lm.arch.family == "llama"


def test_cuda_unavailable_is_clear():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_model("default", device="cuda")


def test_loading_never_modifies_the_folder(tmp_path):
    save_tiny("qwen2", tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    load_model(str(tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_added_token_beyond_the_vocabulary_is_refused_at_load(tmp_path):
    """Issue 27 M5. Before: the model loaded, and a prompt holding the added token crashed generation (IndexError)."""
    from transformers import AutoTokenizer

    save_tiny("llama", tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    tok.add_tokens(["<extra>"])  # id 300; the model's embedding has 300 rows (0-299)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"the tokenizer has added token '<extra>' \(id 300\), but the model's "
                                             r"vocabulary has only 300 rows .*resize_token_embeddings"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("setting", ["max_new_tokens: 100000", "max_new_tokens: 6", "max_prompt_tokens: 100000"])
def test_inputs_beyond_the_context_name_the_setting_and_the_positions(tmp_path, capsys, setting):
    """Issue 27 L5. Before: a rotary model (here Llama, 256 positions) was checked only by the memory estimate
    ("about 6.2 TB"), which names neither the setting nor the context length."""
    from tiny import write_tiny_suite

    from safety_prune.cli import main

    save_tiny("llama", tmp_path / "model")
    suite = Path(write_tiny_suite(tmp_path / "suite"))
    key, value = setting.split(": ")
    text = suite.read_text()
    suite.write_text(text.replace("max_new_tokens: 6", setting) if key == "max_new_tokens" else
                     text.replace("max_prompt_tokens: 32", setting))
    argv = ["audit", "--model", str(tmp_path / "model"), "--probe", str(suite), "--out", str(tmp_path / "run")]
    if value == "6":  # the suite fits; --max-tokens does not
        argv += ["--max-tokens", "300"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "has 256 positions (max_position_embeddings in config.json; it was never trained on longer inputs)" in err
    named = "--max-tokens: 300" if value == "6" else "max_prompt_tokens + generation.max_new_tokens: 100,0"
    assert named in err and "Lower those settings" in err, err
    assert not (tmp_path / "run").exists()


def test_chat_template_token_beyond_the_vocabulary_is_refused(tmp_path):
    """A special token the template emits (added to the tokenizer, not to the weights) would crash every templated
    prompt; a special token is not matched by the load-time check, which lets unused specials (Qwen2's unk) be."""
    from transformers import AutoTokenizer

    from safety_prune.models import check_chat_template

    save_tiny("llama", tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})  # id 300
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"renders the token\(s\) '<\|im_start\|>' \(id 300\), but the model's "
                                             r"vocabulary has only 300 rows.*chat_template: false"):
        check_chat_template(lm)


def test_config_with_more_layers_than_weights_is_refused(tiny_setup, tmp_path, capsys):
    """3 layers in config.json over weights for 2: transformers would fill layer 2 with random values."""
    model = tiny_variant(tiny_setup, tmp_path, num_hidden_layers=3)
    msg = refused(capsys, job_argv("audit", model, tiny_setup[2], tmp_path / "run"),
                   [model, tiny_setup[2].parent], [tmp_path])
    assert "says 3 layers" in msg and "no weights for layer(s) 2" in msg
    assert not (tmp_path / "run").exists()


def test_missing_weight_is_named(tiny_setup, tmp_path):
    """A weight missing from the file (same layer count) is named from transformers' loading info."""
    from safetensors.torch import load_file, save_file

    model = tiny_variant(tiny_setup, tmp_path)
    state = load_file(model / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"missing from the files.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(model))


class _TooSlow(BaseException):
    """Not an Exception (nor an OSError, as TimeoutError is), so no loader's handler can swallow it."""


@pytest.mark.parametrize("hidden", [None, 4096])
def test_config_with_100000_layers_is_refused_quickly(tiny_setup, tmp_path, hidden):
    """From config.json and the safetensors header alone: no 100,000 blocks are built. With a large hidden size the
    estimate of the weights exceeds the memory free, which is the message."""
    extra = {} if hidden is None else {"hidden_size": hidden, "intermediate_size": 4 * hidden, "head_dim": 128,
                                       "num_attention_heads": 32, "num_key_value_heads": 32}
    model = tiny_variant(tiny_setup, tmp_path, num_hidden_layers=100_000, **extra)

    def too_slow(signum, frame):  # before the fix the loader was still building blocks after minutes
        raise _TooSlow("load_model did not refuse the config within 30 s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(30)
    start = time.monotonic()
    try:
        with pytest.raises(ModelLoadError) as exc:
            load_model(str(model))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < 10
    assert ("more than the" in str(exc.value) and "memory free" in str(exc.value)) if hidden else \
        "says 100000 layers" in str(exc.value)


def _scaled(tiny_setup, tmp_path: Path, factor: float) -> Path:
    model = tiny_model("llama")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    dst = tmp_path / "variant"
    model.save_pretrained(dst)
    tiny_tokenizer().save_pretrained(dst)
    return dst


def _small_vocab(tiny_setup, tmp_path: Path) -> Path:
    dst = tmp_path / "variant"
    cfg = tiny_config("llama")
    cfg.vocab_size = 100  # config and weights agree with each other, not with the 300-token tokenizer
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(dst)
    tiny_tokenizer().save_pretrained(dst)
    return dst


def _short_gpt2(tiny_setup, tmp_path: Path) -> Path:
    cfg = tiny_config("gpt2")
    cfg.n_positions = 16  # the tiny suite's prompts are up to 32 tokens, plus 6 generated
    torch.manual_seed(0)
    dst = tmp_path / "variant"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(dst)
    tiny_tokenizer().save_pretrained(dst)
    return dst


def _broken_template(tiny_setup, tmp_path: Path) -> Path:
    dst = tiny_variant(tiny_setup, tmp_path)
    tok_cfg = json.loads((dst / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = "{% for m in messages %}{{ m['content'] }{% endfor %}"  # unbalanced braces
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return dst


DEGENERATE = {
    "vocabulary smaller than the tokenizer": (_small_vocab, r"tokenizer has 300 tokens but .* only 100 rows"),
    "zero layers": (lambda t, p: tiny_variant(t, p, num_hidden_layers=0), r"num_hidden_layers is 0"),
    "negative layers": (lambda t, p: tiny_variant(t, p, num_hidden_layers=-2), r"num_hidden_layers is -2"),
    "GPT-2 n_positions shorter than the prompts": (_short_gpt2, r"has 16 positions \(n_positions"),
    "broken chat template": (_broken_template, r"chat template .* fails"),
    "all-zero weights": (lambda t, p: _scaled(t, p, 0.0), r"same logit for every token"),
    "weights scaled by 1e4": (lambda t, p: _scaled(t, p, 1e4), r"logits up to"),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_model_is_a_model_error(tiny_setup, tmp_path, capsys, case):
    make, pattern = DEGENERATE[case]
    model = make(tiny_setup, tmp_path)
    suite = tiny_setup[2]
    if case == "broken chat template":
        suite = Path(write_tiny_suite(tmp_path / "suite", extra="chat_template: true\n"))
    msg = refused(capsys, job_argv("audit", model, suite, tmp_path / "run"), [model, suite.parent], [tmp_path])
    assert re.search(pattern, msg), msg
    assert re.search(r"\b(restore|fix|lower)\b", msg, re.I), msg  # the message says how to fix it
    assert not (tmp_path / "run").exists()


def test_broken_chat_template_is_ignored_without_chat_template(tiny_setup, tmp_path, capsys):
    """The template is only checked when the suite uses it."""
    model = _broken_template(tiny_setup, tmp_path)
    assert main(job_argv("audit", model, tiny_setup[2], tmp_path / "run")) == 0, capsys.readouterr().err


def test_non_utf8_model_path_is_a_bad_path(tiny_setup, tmp_path, capsys):
    """Before: reported as 'not a readable safetensors file ... truncated or corrupt'."""
    model = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/model\xff"))
    shutil.copytree(tiny_setup[1], model)
    msg = refused(capsys, job_argv("audit", model, tiny_setup[2], tmp_path / "run"),
                   [model, tiny_setup[2].parent], [tmp_path])
    assert "not UTF-8" in msg and "--model" in msg and "corrupt" not in msg
