"""Scale: reduced precision, torchrun data parallelism, device maps with offload, resumable and
recomputing attribution, the GPU check's CPU smoke mode, and clear errors for each misuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scale_worker import samples, scores
from tiny import save_tiny, tiny_model, write_tiny_suite
from torch import Tensor

from safety_prune import distributed
from safety_prune.attribution import UNITS, attribute
from safety_prune.cli import main
from safety_prune.errors import AttributionError, ConfigError
from safety_prune.families import blocks
from safety_prune.models import load_model

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("scale_worker.py")


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}


def _spearman(a: Tensor, b: Tensor) -> float:
    ra, rb = (x.flatten().argsort().argsort().double() for x in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


# -- precision and devices ------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys) -> None:
    save_tiny("llama", tmp_path / "model")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_model(str(tmp_path / "model"), device="cuda")
    code = main(["audit", "--model", str(tmp_path / "model"), "--probe", write_tiny_suite(tmp_path / "suite"),
                 "--out", str(tmp_path / "run"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "--device cuda was requested but CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bfloat16_model_sums_in_float32_and_ranks_like_float32() -> None:
    model = tiny_model("llama", hidden=64)
    data = samples(8)
    ref = attribute(model, data, units=UNITS, batch_size=4)
    low = attribute(model.to(torch.bfloat16), data, units=UNITS, batch_size=4)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in low.scores.values())
    assert _spearman(low.scores["neuron"], ref.scores["neuron"]) > 0.9
    assert _spearman(low.scores["head"], ref.scores["head"]) > 0.9


def test_device_map_with_disk_offload_matches_one_device(tmp_path) -> None:
    """Layer 1 lives on disk (meta tensors outside its forward, accelerate hooks on every module)."""
    from accelerate import dispatch_model

    data = samples(5)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    offloaded = dispatch_model(tiny_model("llama"), device_map=device_map, offload_dir=str(tmp_path / "offload"))
    assert blocks(offloaded)[1].mlp.down_proj.weight.device.type == "meta"
    ref_model = tiny_model("llama")
    for method in ("lrp", "gradient", "wanda"):
        ref = attribute(ref_model, data, method=method, units=UNITS, batch_size=2)
        got = attribute(offloaded, data, method=method, units=UNITS, batch_size=2)
        assert got.scores.keys() == ref.scores.keys()
        for key, value in ref.scores.items():
            assert rel_err(got.scores[key], value) < 1e-5, (method, key)
    save_tiny("llama", tmp_path / "model")  # the loader path (accelerate places every layer on the CPU here)
    lm = load_model(str(tmp_path / "model"), device_map="auto")
    got = attribute(lm.model, data, units=UNITS, batch_size=2)
    ref = attribute(ref_model, data, units=UNITS, batch_size=2)
    assert all(rel_err(got.scores[k], v) < 1e-5 for k, v in ref.scores.items())


@pytest.mark.parametrize("family", ["llama", "opt"])  # OPT applies dropout in the block itself
def test_gradient_checkpointing_gives_identical_relevance(family: str) -> None:
    model = tiny_model(family)
    data = samples(4)
    for method in ("lrp", "gradient"):
        ref = attribute(model, data, method=method, units=UNITS, batch_size=2)
        got = attribute(model, data, method=method, units=UNITS, batch_size=2, gradient_checkpointing=True)
        assert all(torch.equal(got.scores[k], v) for k, v in ref.scores.items()), method
        assert got.info == ref.info
    assert not any("forward" in b.__dict__ for b in blocks(model))  # the per-block wrapper is removed


# -- data parallel --------------------------------------------------------------------------------


def test_shard_bounds_tile_the_samples(monkeypatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    assert distributed.shard_bounds(7, "x") == [(0, 3), (3, 5), (5, 7)]
    with pytest.raises(ConfigError, match=r"--nproc_per_node 3 is larger than the 2 samples of general; use at "
                                          r"most 2 processes"):
        distributed.shard_bounds(2, "general")


def _torchrun(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_two_processes_reproduce_one(tmp_path) -> None:
    """Neuron, head and weight relevance, explained sums, Wanda, and per-sample activations in sample order."""
    _torchrun(str(WORKER), "dist", str(tmp_path / "dist.safetensors"))
    got = load_file(tmp_path / "dist.safetensors")
    assert float(got.pop("too_many_ranks")) == 1.0
    ref = scores(tiny_model("llama"), samples(5))
    assert got.keys() == ref.keys() and any(k.startswith("lrp.weight.") for k in ref)
    for key, value in ref.items():
        assert rel_err(got[key], value) < 1e-5, key


def test_torchrun_audit_writes_one_set_of_outputs(tmp_path) -> None:
    save_tiny("llama", tmp_path / "model")
    suite = write_tiny_suite(tmp_path / "suite")
    common = ["audit", "--model", str(tmp_path / "model"), "--probe", suite, "--batch-size", "2"]
    _torchrun("-m", "safety_prune", *common, "--out", str(tmp_path / "two"))
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "one", "suite", "two"]  # no staging, no ckpt
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    one, two = (load_file(tmp_path / d / "relevance.safetensors") for d in ("one", "two"))
    assert one.keys() == two.keys()
    for key, value in one.items():
        assert rel_err(two[key], value) < 1e-5, key
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert a["baseline"] == b["baseline"]


# -- resumable attribution ------------------------------------------------------------------------


def _worker(out: Path, ckpt: Path, pause: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), "resume", str(out), str(ckpt), str(pause)], env=_env(),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_attribution_resumes_bitwise(tmp_path) -> None:
    ckpt = tmp_path / "attr.ckpt"
    killed = _worker(tmp_path / "never.safetensors", ckpt, pause=0.3)
    reference = _worker(tmp_path / "ref.safetensors", tmp_path / "ref.ckpt")
    deadline = time.time() + 60
    while not ckpt.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), killed.stderr.read() if killed.poll() is not None else "no checkpoint within 60 s"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert reference.wait(timeout=60) == 0, reference.stderr.read()
    resumed = _worker(tmp_path / "resumed.safetensors", ckpt)
    assert resumed.wait(timeout=60) == 0, resumed.stderr.read()
    assert not ckpt.exists() and not (tmp_path / "ref.ckpt").exists()  # deleted once complete
    got, ref = load_file(tmp_path / "resumed.safetensors"), load_file(tmp_path / "ref.safetensors")
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert torch.equal(got[key], value), key


class _Interrupt(Exception):
    pass


def _interrupted(model: torch.nn.Module, data, ckpt: Path, after: int, **kw) -> None:
    """Attribute until the ``after``-th forward, then stop as a crash would."""
    calls = []

    def stop(*_):
        calls.append(1)
        if len(calls) > after:
            raise _Interrupt

    handle = model.register_forward_pre_hook(stop)
    try:
        with pytest.raises(_Interrupt):
            attribute(model, data, units=UNITS, batch_size=1, checkpoint=ckpt, checkpoint_every=2, **kw)
    finally:
        handle.remove()


def test_resume_in_process_and_mismatched_checkpoints_are_refused(tmp_path) -> None:
    model, data, ckpt = tiny_model("llama"), samples(6), tmp_path / "a.ckpt"
    ref = attribute(model, data, method="activation", units=("neuron",), batch_size=1)
    _interrupted(model, data, ckpt, after=3)
    assert ckpt.exists()
    with pytest.raises(AttributionError, match=r"different inputs: the samples .*Delete it.*another run directory"):
        attribute(model, samples(5), units=UNITS, batch_size=1, checkpoint=ckpt)
    with pytest.raises(AttributionError, match=r"different inputs: the attribution settings"):
        attribute(model, data, units=UNITS, batch_size=2, checkpoint=ckpt)
    with pytest.raises(AttributionError, match=r"different inputs: the model"):
        attribute(tiny_model("llama", seed=1), data, units=UNITS, batch_size=1, checkpoint=ckpt)
    ckpt.unlink()
    _interrupted(model, data, ckpt, after=5, method="activation")  # per-sample values survive a resume too
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    got = attribute(model, data, method="activation", units=UNITS, batch_size=1, checkpoint=ckpt)
    handle.remove()
    assert len(forwards) == 2 and not ckpt.exists()  # batches 0-3 came from the checkpoint
    assert torch.equal(got.scores["neuron"], ref.scores["neuron"])
    assert torch.equal(got.per_sample["neuron"], ref.per_sample["neuron"])


# -- the GPU check, in its CPU smoke mode ---------------------------------------------------------


def test_gpu_check_smoke_mode_runs_on_cpu(tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--smoke",
                          "--out", str(out)], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["smoke"] is True
    assert all(c["passed"] for c in report["checks"]), report["checks"]
    assert report["precision"]["spearman_neuron"] > 0.9
    assert {row["name"] for row in report["timing"]} >= {"lrp", "plain", "wanda"}


def test_model_digest_handles_large_parameters():
    """Sampling indices of a parameter larger than float32's exact integers stay in range."""
    from safety_prune.checkpoint import model_digest

    big = torch.zeros(28_311_552)
    assert len(model_digest("cfg", [("w", big)])) == 64
