import json
from pathlib import Path

import pytest
import torch
from tiny import FAMILIES, save_tiny, tiny_model

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
