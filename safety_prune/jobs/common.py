"""What every job shares: opening model and suite, the pre-flight, the staged finish, saving a model."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..distributed import is_main_process
from ..errors import OutputError
from ..families import geometry
from ..gate import evaluate_gate, verdict
from ..io import atomic_dir, sha256_file, write_json
from ..models import LoadedModel, check_chat_template, check_context, load_model
from ..results import SCHEMA_VERSION, Header, model_info
from ..run import Staging, check_not_inside, check_not_over_inputs, check_out_dir, check_target_path, entries, manifest
from ..suite import ProbeSuite, load_suite
from .options import RunOptions, SuiteOptions


def limited(items: list, limit: int | None) -> list:
    """The one place ``--limit`` cuts a set: its first ``limit`` items."""
    return items if limit is None else items[:limit]


def limited_count(n: int, limit: int | None) -> int:
    """How many of ``n`` requested samples a ``--limit`` run uses."""
    return n if limit is None else min(n, limit)


def open_model(spec: str, opt: RunOptions) -> LoadedModel:
    return load_model(spec, device=opt.device, dtype=opt.dtype, trust_remote_code=opt.trust_remote_code,
                      allow_pickle=opt.allow_pickle, device_map=opt.device_map)


def start_run(job: str, model: str, probe: str, out: str | Path, overwrite: bool, opt: SuiteOptions
              ) -> tuple[Path, ProbeSuite, LoadedModel]:
    """Everything a job checks before it writes anything: the options, --out (and --save-model), the suite with its
    data, the model, and that the model can take the suite's inputs."""
    opt.validate()
    local = Path(model).expanduser() if model != "default" and Path(model).expanduser().is_dir() else None
    check_not_inside(Path(out), local, "--out")  # known before loading for a model folder; before any probe
    out = check_out_dir(out, overwrite, job)
    check_save_target(getattr(opt, "save_model", None), local, out)
    suite = load_suite(probe, encoding_errors=opt.encoding_errors)
    check_not_over_inputs(out, suite.data_files(), "--out")
    lm = open_model(model, opt)
    check_not_inside(out, lm.folder, "--out")
    check_not_over_inputs(out, lm.weights_sha256, "--out")
    check_inputs_fit(lm, suite, opt)
    return out, suite, lm


def check_inputs_fit(lm: LoadedModel, suite: ProbeSuite, opt: SuiteOptions) -> None:
    """The suite's chat template renders, and its longest inputs fit a learned position table (GPT-2, OPT)."""
    added = check_chat_template(lm) if suite.chat_template else len(lm.tokenizer("")["input_ids"])
    check_context(lm, {
        "max_prompt_tokens + generation.max_new_tokens" + (" + the chat template" if suite.chat_template else ""):
            suite.max_prompt_tokens + added + suite.generation.max_new_tokens,
        "--max-tokens": opt.max_tokens,
    })


def preflight_attribution(lm: LoadedModel, suite: ProbeSuite, opt: SuiteOptions, units: Sequence[str]) -> None:
    """Refuse, before any output exists, an attribution batch that would not fit in memory.

    Sequences are general texts (``opt.max_tokens``) or a prompt plus its continuation.
    """
    from ..preflight import check_attribution_memory

    seq_len = max(opt.max_tokens, suite.max_prompt_tokens + suite.generation.max_new_tokens)
    check_attribution_memory(lm.model, opt.batch_size, seq_len, units, opt.max_memory,
                             gradient_checkpointing=opt.gradient_checkpointing)


@dataclass
class Finish:
    """How a job's run directory is closed: manifest, gate, results.json, then its report."""

    seed: int
    argv: Sequence[str] | None
    data_files: dict[str, str]
    lm: LoadedModel
    started: float = field(default_factory=time.time)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, in the order they ran
    _lap: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.stages["open"] = round(time.time() - self.started, 3)  # the checks, the suite and the model's load

    def lap(self, stage: str) -> None:
        """Close ``stage``: the seconds since the previous lap (or since the job's checks ended) go to the
        manifest's ``stages_s``, so a slow run says where its time went."""
        now = time.perf_counter()
        self.stages[stage] = round(self.stages.get(stage, 0.0) + now - self._lap, 3)
        self._lap = now

    def conclude(self, results: dict[str, Any], fail_on: Sequence[str] | None = None) -> dict[str, Any]:
        """Add the manifest and, for a gated job, the gate and verdict (``fail_on`` None: compress and circuit have
        no gate). Done once: a saved model's card states these, and its run id is a hash of this manifest."""
        results["manifest"] = manifest(seed=self.seed, argv=list(self.argv) if self.argv is not None else None,
                                       data_files=self.data_files, model_files=self.lm.weights_sha256,
                                       started=self.started, extra={"numerics": numerics(self.lm.model),
                                                                    "stages_s": dict(self.stages)})
        if fail_on is not None:
            results["gate"] = evaluate_gate(results, fail_on)
            results["verdict"] = verdict(results)
        return results

    @staticmethod
    def record(staging: Staging, results: dict[str, Any],
               render: Callable[[dict[str, Any], Staging], None]) -> dict[str, Any]:
        """Write the concluded results.json and render its pages."""
        write_json(staging.path("results.json"), results)
        render(results, staging)
        return results

    def write(self, staging: Staging, results: dict[str, Any], render: Callable[[dict[str, Any], Staging], None],
              fail_on: Sequence[str] | None = None) -> dict[str, Any]:
        """``conclude`` then ``record``: a job that writes nothing between them."""
        return self.record(staging, self.conclude(results, fail_on), render)


def numerics(model: torch.nn.Module) -> dict[str, str]:
    """Where and in what precision the model ran: with the seed, the torch version (``versions``) and nothing else,
    these fix every number of the run; the thread count (``hardware``) does not (tests/jobs/test_determinism.py)."""
    param = next(model.parameters())
    return {"device": param.device.type, "dtype": str(param.dtype).removeprefix("torch.")}


def header(job: str, lm: LoadedModel) -> Header:
    """The first keys of every results.json."""
    return {"schema_version": SCHEMA_VERSION, "job": job,
            "model": model_info(lm.spec, lm.name, lm.arch.family, geometry(lm.model))}


def check_save_target(target: str | None, lm_folder: Path | None, out: Path) -> Path | None:
    """Refuse a save path inside the input model's folder, the same as, inside or around ``--out`` (model and run
    files would mix), a non-empty folder, or one the save could not write (see ``run.check_target_path``);
    leaves nothing behind."""
    if target is None:
        return None
    path = Path(target).expanduser()
    check_not_inside(path, lm_folder, "--save-model")
    run, saved = out.expanduser().resolve(), path.resolve()
    if saved == run or run in saved.parents or saved in run.parents:
        raise OutputError(f"--save-model {target} and --out {out} overlap, so the model's files and the run's "
                          "would mix. Give --save-model a folder of its own, outside --out.")
    if path.exists() and (not path.is_dir() or entries(path)):
        raise OutputError(f"--save-model {target} exists and is not an empty folder. Choose a new folder.")
    check_target_path(path, "--save-model")
    return path.resolve()


def save_model_folder(lm: LoadedModel, model: torch.nn.Module, target: Path, card: str) -> dict[str, str]:
    """A plain transformers folder (safetensors, tokenizer, model card), written atomically (rank 0 only).

    Returns the sha256 of each weight file written, for the report."""
    if not is_main_process():
        return {}
    try:
        with atomic_dir(target, record=True) as tmp:
            model.save_pretrained(tmp)
            lm.tokenizer.save_pretrained(tmp)
            (tmp / "README.md").write_text(card, encoding="utf-8")
    except (OSError, SafetensorError) as exc:  # a full disk shows as either
        raise OutputError(f"--save-model {target}: the model could not be written ({exc}). Nothing of it was "
                          "kept. Free space on that filesystem (or choose another folder) and run again.") from exc
    return {p.name: sha256_file(p) for p in sorted(target.glob("*.safetensors"))}
