"""Subprocess side of tests/test_scale.py: attribution under torchrun, or one killable/resumable run.

``python scale_worker.py dist OUT``: under torchrun, attribute a tiny llama (lrp with every unit kind,
activation with per-sample values, wanda) and let rank 0 save the scores to OUT; also check that more
ranks than samples is refused. ``python scale_worker.py resume OUT CKPT [SLEEP]``: attribute with a
checkpoint after every batch, sleeping SLEEP seconds per batch (so the parent can kill it), and save.
Run with ``tests`` on PYTHONPATH (as test_scale.py does).
"""

from __future__ import annotations

import sys
import time

import torch
from safetensors.torch import save_file
from tiny import CORPUS, tiny_model, tiny_tokenizer

from safety_prune import distributed
from safety_prune.attribution import UNITS, Sample, attribute
from safety_prune.errors import ConfigError


def samples(n: int) -> list[Sample]:
    tok = tiny_tokenizer()
    texts = (CORPUS * 4)[:n]
    return [Sample(tuple(tok(t)["input_ids"][: 6 + i % 7]), 1 + i % 3) for i, t in enumerate(texts)]


def scores(model: torch.nn.Module, data: list[Sample], **kw) -> dict[str, torch.Tensor]:
    out = {}
    for method in ("lrp", "activation", "wanda"):
        rel = attribute(model, data, method=method, units=UNITS if method != "activation" else ("neuron",),
                        batch_size=2, **kw)
        out |= {f"{method}.{k}": v for k, v in rel.scores.items()}
        out |= {f"{method}.per_sample.{k}": v for k, v in rel.per_sample.items()}
        if method == "lrp":
            out["lrp.explained"] = torch.tensor([rel.info["explained_sum"], rel.info["input_relevance_sum"]])
    return out


def main() -> None:
    torch.set_num_threads(1)
    mode, out = sys.argv[1], sys.argv[2]
    model = tiny_model("llama")
    if mode == "dist":
        with distributed.session("cpu"):
            result = scores(model, samples(5))  # 5 samples: shards of 3 and 2
            try:
                attribute(model, samples(1), desc="the one-sample set")
            except ConfigError as exc:
                result["too_many_ranks"] = torch.tensor([1.0]) if "use at most 1 processes" in str(exc) else \
                    torch.tensor([0.0])
            if distributed.is_main_process():
                save_file(result, out)
        return
    ckpt, pause = sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    if pause:
        model.register_forward_pre_hook(lambda *_: time.sleep(pause))
    rel = attribute(model, samples(12), units=UNITS, batch_size=1, checkpoint=ckpt, checkpoint_every=1)
    save_file(rel.scores | {"explained": torch.tensor([rel.info["explained_sum"]], dtype=torch.float64)}, out)


if __name__ == "__main__":
    main()
