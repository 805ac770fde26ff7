"""GPU-first behaviour that a CPU can pin: weight scores stay where they were summed, the batch policy of
generation and perplexity, and the clear errors of bad device-related input."""

from __future__ import annotations

import pytest
import torch
from tiny import CORPUS, tiny_model, tiny_tokenizer
from torch.overrides import TorchFunctionMode

from safety_prune.attribution import Sample, attribute
from safety_prune.errors import ConfigError
from safety_prune.evaluation import generate, perplexity
from safety_prune.evaluation.generation import MAX_AUTO_BATCH, check_batch, generation_batch, rows_per_batch
from safety_prune.families import blocks
from safety_prune.jobs.options import RunOptions
from safety_prune.pruning import masked, select

_TO_HOST = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item}


class HostCopies(TorchFunctionMode):
    """Within the block, records the size of every tensor brought to the host (``.cpu()``, ``.to("cpu")``,
    ``.numpy()``, ``.tolist()``, ``.item()``) that holds at least ``numel`` elements. On a CPU these calls cost
    nothing, but on a GPU each is a device-to-host copy; scoped to the block, not a global patch.

    ``.to(t.device)`` is not counted: on a CPU it cannot be told from a move to the model's device, which on a GPU
    is no host copy; a move meant for the host names it (``"cpu"``)."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.sizes = numel, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_cpu = func is torch.Tensor.to and any(
            isinstance(a, str) and a.startswith("cpu") for a in (*args[1:], kwargs.get("device")))
        if (func in _TO_HOST or to_cpu) and isinstance(args[0], torch.Tensor) and args[0].numel() >= self.numel:
            self.sizes.append(args[0].numel())
        return func(*args, **kwargs)


def _samples(n: int = 4) -> list[Sample]:
    tok = tiny_tokenizer()
    return [Sample(tuple(tok(t)["input_ids"]), 1) for t in CORPUS[:n]]


@pytest.mark.parametrize("method", ["lrp", "wanda", "magnitude"])
def test_weight_scores_select_and_mask_without_a_weight_sized_host_copy(method: str) -> None:
    model = tiny_model("llama")
    smallest = min(m.weight.numel() for b in blocks(model) for m in b.modules() if isinstance(m, torch.nn.Linear))
    with HostCopies(smallest) as copies:
        rel = attribute(model, _samples(), method=method, units=("neuron", "head", "weight"), batch_size=2)
        units = select(rel.scores, "weight", k=10)
        with masked(model, units, scale=0.5):
            pass
    assert copies.sizes == [], f"weight-sized host copies of {copies.sizes} elements"
    weights = {k: v for k, v in rel.scores.items() if k.startswith("weight.")}
    assert weights and all(v.device == model.device for v in weights.values())
    assert len(units) == 10


def test_the_counter_sees_a_weight_sized_host_copy() -> None:
    """The check above can fail: a ``.cpu()`` of a weight is counted (an ``.item()`` of a scalar is not)."""
    w = blocks(tiny_model("llama"))[0].mlp.down_proj.weight
    with HostCopies(w.numel()) as copies:
        w.detach().cpu()
        w.sum().item()
        w.detach().to("cpu")
    assert copies.sizes == [w.numel(), w.numel()]


def test_device_sized_batch_comes_from_free_memory_and_the_explicit_option() -> None:
    model = tiny_model("llama")
    cpu = torch.device("cpu")
    assert rows_per_batch(model, cpu, 16, 500, 64, 64) == 16  # CPU: the caller's batch
    assert rows_per_batch(model, cpu, 16, 500, 64, 64, free_bytes=10**12) == 500  # plenty: every row
    assert rows_per_batch(model, cpu, 16, 10**6, 64, 64, free_bytes=10**12) == MAX_AUTO_BATCH
    assert rows_per_batch(model, cpu, 16, 500, 64, 64, free_bytes=1) == 16  # never below the caller's
    with generation_batch("7"):
        assert rows_per_batch(model, cpu, 16, 500, 64, 64, free_bytes=10**12) == 7
    assert rows_per_batch(model, cpu, 16, 500, 64, 64) == 16  # the option is scoped to the block


def test_greedy_generation_at_the_device_sized_batch_equals_batch_16() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    prompts = [text[:n] for text in CORPUS[:8] for n in (5, 12, 20, 31, 44)]  # 40 prompts of mixed length
    size = rows_per_batch(model, torch.device("cpu"), 16, len(prompts), 64, 64, free_bytes=10**12)
    assert size == len(prompts)
    at16 = generate(model, tok, prompts, max_new_tokens=10, batch_size=16)
    with generation_batch(size):
        assert generate(model, tok, prompts, max_new_tokens=10, batch_size=16) == at16
    text = [" ".join(CORPUS)]
    at4 = perplexity(model, tok, text, max_length=32, stride=16, batch_size=4)
    with generation_batch(64):
        wide = perplexity(model, tok, text, max_length=32, stride=16, batch_size=4)
    assert wide.perplexity == pytest.approx(at4.perplexity, rel=1e-6) and wide.n_tokens == at4.n_tokens


@pytest.mark.parametrize("value", [0, -3, "0", "many", "2.5", ""])
def test_generation_batch_below_one_is_a_clear_error(value) -> None:
    with pytest.raises(ConfigError, match=r"--generation-batch .*auto or a whole number of rows >= 1"):
        check_batch(value)
    with pytest.raises(ConfigError, match=r"--generation-batch"):
        RunOptions(generation_batch=str(value)).validate()
    assert check_batch("12") == 12 and check_batch("auto") == "auto"


@pytest.mark.parametrize("device", ["gpu", "cuda0", "cuda:x", "mps", "CUDA"])
def test_device_that_is_not_cpu_or_cuda_n_is_a_clear_error(device: str) -> None:
    with pytest.raises(ConfigError, match=r"--device .* Use cpu, cuda or cuda:N"):
        RunOptions(device=device).validate()


def test_cli_refuses_a_generation_batch_below_one_and_writes_nothing(tmp_path, capsys) -> None:
    from safety_prune.cli import main

    out = tmp_path / "run"
    code = main(["audit", "--model", "default", "--out", str(out), "--generation-batch", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--generation-batch '0'" in err and "Traceback" not in err
    assert not out.exists()


def _gpu_check():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "gpu"], "--device 'gpu' is not supported"),
    (["--device", "cpu", "--memory", "0.001"], "8B-shape scale row needs about"),
])
def test_gpu_check_refuses_bad_input_before_writing(tmp_path, capsys, args: list[str], message: str) -> None:
    out = tmp_path / "gpu_check.json"
    assert _gpu_check().main([*args, "--smoke", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_scale_row_plan_for_llama3_8b() -> None:
    """Llama-3-8B has 8.03 B parameters; neuron and head units fit in 80 GiB at 2048 tokens, not in 16."""
    gc = _gpu_check()
    assert gc._n_params(gc.LLAMA3_8B)[0] == pytest.approx(8.03e9, rel=0.001)
    assert gc.check_scale_fits(gc.LLAMA3_8B, 2048, torch.device("cuda"), 139.0) is True
    with pytest.raises(ConfigError, match="lower --tokens"):
        gc.check_scale_fits(gc.LLAMA3_8B, 2048, torch.device("cuda"), 16.0)
