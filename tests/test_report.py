"""The HTML report: sections, escaping, self-containment, re-rendering and comparing runs, unusable inputs.

Fixtures are real ``audit``/``correct`` outputs of a tiny random model; ``report_extras.json`` adds the optional
keys (heatmap, unit examples, scorer validation, gate). The browser test opens a hostile report in headless
Chromium and checks, through the DevTools protocol, that nothing is fetched and no injected markup runs.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from report_pages import (
    fixture_samples,
    load_fixture,
    rich_results,
    secondary_result,
    with_secondary,
    write_run,
)

from safety_prune.cli import main
from safety_prune.errors import OutputError, ResultsError
from safety_prune.gate import evaluate_gate
from safety_prune.render import render_compare, render_report, render_run
from safety_prune.run import SCHEMA_VERSION

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'
NAME = '"><script>window.__pwned=3</script><b>evil-model</b>'
FILE = "data/<img src=x onerror=window.__pwned=4>.txt"
METHOD = "<svg onload=alert(5)>$x$"








def _hostile() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Injection payloads everywhere model or user text reaches the page."""
    res, samples = rich_results(), fixture_samples()
    res["model"]["name"] = res["model"]["spec"] = NAME
    res["manifest"]["data_sha256"][FILE] = "0" * 64
    res["manifest"]["model_sha256"] = {f"{NAME}/model.safetensors": "1" * 64}
    res["manifest"]["command"] = ["safety-prune", "correct", "--model", NAME]
    res["comparison"][0]["method"] = METHOD
    res["unit_examples"][0]["undesired"][0]["token"] = SCRIPT
    res["unit_examples"][0]["unit"] = IMG
    for row in samples:
        if row["prompt_index"] == 0:
            row["continuation"] = f"{SCRIPT} and {IMG}"
            row["score"] = 0.99  # sorts it first among the examples
        if row["prompt_index"] == 1:
            row["prompt"] = IMG
    return res, samples




# ------------------------------------------------------------------------------------------- rendering

def test_render_run_needs_no_model(tmp_path: Path) -> None:
    res = rich_results()
    res["model"]["spec"] = str(tmp_path / "deleted-model")  # the model is gone; re-rendering must not care
    run = write_run(tmp_path / "run", res, fixture_samples())
    out = render_run(run)
    html = out.read_text(encoding="utf-8")
    assert out == run / "report.html"
    for title in ("What was run", "The scorer and its limits", "Baseline vs corrected", "The circuit",
                  "What the removed units respond to", "Method comparison and sweep", "Examples",
                  "Limitations and reproducibility"):
        assert title in html
    assert "PASS" in html and "behaviour_rate&gt;0.05" in html and "perplexity&gt;400" in html
    assert "0.97" in html and "not validated" not in html  # the validation block
    assert "Content warning" in html and '<mark><span class="ws" title="space">·</span>suck</mark>' in html
    assert html.count("<svg") == 4  # metrics, heatmap, per-layer, trade-off
    assert "safety-prune correct --model /tmp/tm/llama --out /tmp/run2" in html  # reproducing command


def test_audit_only_report_adapts(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    render_report(load_fixture("audit_results.json"), tmp_path / "missing.jsonl", out)
    html = out.read_text(encoding="utf-8")
    assert "audit report" in html and "correction report" not in html and "Measurements" in html
    assert "Rate of" not in html and "Behaviour rate" in html  # no probe.behaviour: generic wording
    assert "Method comparison" not in html and "after correction" not in html
    assert "not validated in this run" in html and "safety-prune scorer validate" in html


def test_suite_behaviour_labels_the_report(tmp_path: Path) -> None:
    """The suite's ``behaviour: {name, metric}`` (results.json probe.behaviour) words the page, not "toxicity"."""
    res = rich_results()
    res["probe"]["behaviour"] = {"name": "looping continuations", "metric": "repetition ratio"}
    res["probe"]["thresholds"] = {"behaviour_rate": 0.1}
    html = render_run(write_run(tmp_path / "run", res, fixture_samples())).read_text(encoding="utf-8")
    text = _text(html)
    for label in ("correction report · looping continuations", "Rate of looping continuations",
                  "Mean repetition ratio", "mean repetition ratio per prompt", "highest repetition ratio",
                  "count as looping continuations"):
        assert label in text, label
    assert "behaviour_rate>0.1 Rate of looping continuations" in text  # the verdict row
    for old in ("Toxicity rate", "Mean toxicity", "tox. rate", "mean toxicity", "count as toxic"):
        assert old not in text, old


def _text(page: str) -> str:
    """The page's visible text, tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page)).split())






def test_secondary_scorer_beside_the_primary(tmp_path: Path) -> None:
    res = with_secondary(rich_results())
    html = render_run(write_run(tmp_path / "run", res, fixture_samples())).read_text(encoding="utf-8")
    text = _text(html)
    assert "Second opinion: toxblock A BiLSTM scorer." in text and "Misses coded toxicity." in text  # section 2
    assert "Second opinion: profanity and toxblock on the same continuations" in text  # section 3
    assert ("metric profanity baseline profanity corrected toxblock baseline toxblock corrected agreement "
            "(baseline → corrected)") in text
    # a rate shows the count it stands for (made-up rates of 12 prompts need not be whole counts: "≈")
    assert "0.25 (3/12) [0.125, 0.375]" in text and "0.125 (≈1.5/12) [0.0625, 0.1875]" in text
    assert "0.75 → 0.875" in text
    assert "toxblock 0.375" in text and "Only profanity decides the verdict" in text
    assert "toxblock rate (agreement)" in text and text.count("0.5 (6/12) (0.625)") == len(res["comparison"])
    # the gate reads the primary only: a secondary rate above the threshold changes nothing
    assert evaluate_gate(res, ["behaviour_rate>0.2"])["passed"]
    res["baseline"]["secondary"]["toxblock"]["agreement"] = "high"
    with pytest.raises(ResultsError, match=r"baseline\.secondary\.toxblock\.agreement is the string 'high', but "
                                           r"must be a number from 0 to 1 or null"):
        render_run(write_run(tmp_path / "bad", res))


def test_audit_report_with_secondary_has_no_corrected_columns(tmp_path: Path) -> None:
    res = load_fixture("audit_results.json")
    res["scorer"]["secondary"] = [{"name": "repetition", "description": "d", "limits": "l", "threshold": 0.5}]
    res["baseline"]["secondary"] = {"repetition": secondary_result(0.25, 0.5)}
    out = tmp_path / "report.html"
    render_report(res, tmp_path / "missing.jsonl", out)
    text = _text(out.read_text(encoding="utf-8"))
    assert "metric profanity repetition agreement rate" in text and "corrected" not in text


def test_report_is_self_contained_and_small(tmp_path: Path) -> None:
    res, samples = rich_results(), fixture_samples() * 40  # a realistic size: 30 layers x 64 bins, many samples
    res["circuit_heatmap"] = [[-(i * j % 7) / 100 for j in range(64)] for i in range(30)]
    res["model"]["n_neurons_per_layer"] = 1536
    run = write_run(tmp_path / "run", res, samples)
    html = render_run(run).read_text(encoding="utf-8")
    assert len(html.encode()) < 3_000_000
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    assert f'http-equiv="Content-Security-Policy" content="{csp}"' in html
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html, flags=re.I)
    assert all(r.startswith(("#", "data:")) for r in refs), refs
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html


def test_hostile_text_is_escaped(tmp_path: Path) -> None:
    res, samples = _hostile()
    html = render_run(write_run(tmp_path / "run", res, samples)).read_text(encoding="utf-8")
    for payload in (SCRIPT, IMG, NAME, FILE, "<svg onload"):
        assert payload not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;svg onload=alert(5)&gt;" in html  # matplotlib escapes legend text inside the SVG


def test_control_characters_are_shown(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", load_fixture("correct_results.json"), fixture_samples())
    html = render_run(run).read_text("utf-8")
    assert "\x14" not in html and "\u2414" in html


# ------------------------------------------------------------------------------------------- comparing

def test_compare_two_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = load_fixture("correct_results.json")
    b = copy.deepcopy(a)
    b["manifest"]["seed"] = 1
    b["manifest"]["command"] = [*a["manifest"]["command"], "--seed", "1"]
    b["corrected"]["perplexity"], b["corrected"]["perplexity_ci"] = 330.0, [329.0, 331.0]
    run_a, run_b = write_run(tmp_path / "a", a), write_run(tmp_path / "b", b)
    assert main(["report", "--compare", str(run_a), str(run_b)]) == 0, capsys.readouterr().err
    html = (run_b / "compare.html").read_text(encoding="utf-8")
    assert re.search(r"<td class=\"break\">seed</td><td class=\"break mono\">0</td><td class=\"break mono\">1</td>",
                     html)
    assert "likely different" in html and "within noise" in html
    assert "do not overlap" in html  # the rule is explained on the page
    out = render_compare(run_a, run_b, tmp_path / "elsewhere" / "cmp.html")
    assert out.is_file()


# ---------------------------------------------------------------------------------------------- errors

def test_run_dir_without_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    assert main(["report", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "has no results.json" in err and str(tmp_path / "run") in err and "Traceback" not in err


def test_incompatible_schema(tmp_path: Path) -> None:
    res = load_fixture("correct_results.json")
    res["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ResultsError, match=rf"results\.json has results schema_version {SCHEMA_VERSION + 1}.*"
                                           rf"reads schema_version {SCHEMA_VERSION} only.*incompatible schema"):
        render_run(write_run(tmp_path / "run", res))


def test_schema_1_results_name_both_versions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A results.json of the previous schema (toxicity_* metric names) is refused with what changed and the fix."""
    assert SCHEMA_VERSION == 2
    res = load_fixture("correct_results.json")
    res["schema_version"] = 1
    run = write_run(tmp_path / "run", res)
    assert main(["report", str(run)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "schema_version 1" in err and "reads schema_version 2 only" in err
    assert "written by an older safety-prune" in err and "toxicity_rate -> behaviour_rate" in err
    assert "Re-render it with the safety-prune version that wrote it" in err and "rerun the job" in err
    assert "Traceback" not in err and not (run / "report.html").exists()


def test_corrupt_json_names_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{\n  "schema_version": 1,\n  "job": "audit"\n  "model": {}\n}\n')
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'results.json'} is not valid JSON (line 4, column 3" in err


def test_report_cli_needs_one_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report"]) == 2
    assert "exactly one of RUN_DIR" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ unusable results

def _set(res: dict[str, Any], key: str, value: Any) -> None:
    """``key`` is a dotted path with [i] for list items, e.g. ``comparison[0].k``."""
    parts = [int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]\.?", key) if p]
    node = res
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


# (key to edit, hand-edited value, key the error names, what it says about it)
HAND_EDITS = [
    ("baseline", "oops", "baseline", "must be an object of metrics"),
    ("manifest", ["seed", 0], "manifest", "is an array, but must be an object"),
    ("model", "llama", "model", "must be an object"),
    ("baseline.behaviour_rate", float("nan"), "baseline.behaviour_rate", "is nan (not a finite number"),
    ("corrected.perplexity", float("inf"), "corrected.perplexity", "is inf (not a finite number"),
    ("comparison[1].perplexity_ci[0]", float("-inf"), "comparison[1].perplexity_ci[0]", "not a finite number"),
    ("baseline.perplexity", "305", "baseline.perplexity", "is the string '305', but must be a number"),
    ("corrected", "yes", "corrected", "must be an object of metrics"),
    ("corrected.perplexity_ci", ["low", "high"], "corrected.perplexity_ci[0]", "must be a number"),
    ("comparison", 3, "comparison", "must be an array"),
    ("comparison[0].k", "five", "comparison[0].k", "must be a number or null"),
    ("comparison[0].paired_vs_baseline", {"delta": 0.1}, "comparison[0].paired_vs_baseline", "has no 'ci_low'"),
    ("probe.thresholds", [0.1], "probe.thresholds", "must be an object"),
    ("probe.thresholds.behaviour_rate", "0.1", "probe.thresholds.behaviour_rate", "must be a number"),
    ("probe.generation", None, "probe.generation", "is null, but must be an object"),
    ("scorer.validation", [0.97], "scorer.validation", "must be an object or null"),
    ("manifest.versions", "<volatile>", "manifest.versions", "must be an object or null"),
    ("gate", "passed", "gate", "must be an object"),
    ("gate.passed", "false", "gate.passed", "must be true or false"),
    ("gate.checks[0].expr", "behaviour_rate>>0.05", "gate.checks[0].expr", "is not a usable gate expression"),
    ("circuit.per_layer[0].abs_share", "big", "circuit.per_layer[0].abs_share", "must be a number"),
    ("circuit.heads", 5, "circuit.heads", "must be an object or null"),
    ("pruned.units", [{"layer": 0}], "pruned.units[0]", "must be a single value"),
    ("selection", {"k": 5}, "selection", "has no 'rule'"),
    ("unit_examples", 3, "unit_examples", "must be an array"),
    ("unit_examples[0].general", 1, "unit_examples[0].general", "must be an array"),
]


@pytest.mark.parametrize(("key", "value", "named", "problem"), HAND_EDITS, ids=[e[0] for e in HAND_EDITS])
def test_hand_edited_results_name_file_key_and_fix(tmp_path: Path, key: str, value: Any, named: str,
                                                   problem: str) -> None:
    res = rich_results()
    _set(res, key, value)
    run = write_run(tmp_path / "run", res, fixture_samples())
    with pytest.raises(ResultsError) as info:
        render_run(run)
    msg = str(info.value)
    assert msg.startswith(f"{run / 'results.json'}: {named} "), msg
    assert problem in msg and "rerun the job that wrote it" in msg
    assert not (run / "report.html").exists()


def test_hand_edited_results_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = load_fixture("correct_results.json")
    res["baseline"] = "n/a"
    run = write_run(tmp_path / "run", res)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'results.json'}: baseline is the string 'n/a'" in err and "Traceback" not in err
    res = load_fixture("correct_results.json")
    res["corrected"]["behaviour_rate"] = float("nan")  # would pass any 'behaviour_rate>X' gate unnoticed
    run = write_run(tmp_path / "nan", res)
    assert main(["report", str(run), "--fail-on", "behaviour_rate>0.05"]) == 2
    assert "corrected.behaviour_rate is nan" in capsys.readouterr().err


def test_gated_metric_missing_from_results(tmp_path: Path) -> None:
    res = load_fixture("correct_results.json")
    del res["corrected"]["behaviour_rate"]
    with pytest.raises(ResultsError, match=r"corrected\.behaviour_rate is missing, but probe\.thresholds"):
        render_run(write_run(tmp_path / "run", res))


def test_keys_the_page_shows_together(tmp_path: Path) -> None:
    res = load_fixture("correct_results.json")
    del res["method"]  # a correction without its method
    with pytest.raises(ResultsError, match=r"results\.json: corrected is present but the run records no 'method'"):
        render_run(write_run(tmp_path / "run", res))
    res = load_fixture("audit_results.json")
    del res["model"]["n_heads"]
    with pytest.raises(ResultsError, match=r"results\.json: model has n_layers but no 'n_heads'"):
        render_run(write_run(tmp_path / "audit", res))


def _validation_selection() -> dict[str, Any]:
    """A ``selection`` by rule "validation", as the correct job writes it and report.html.j2 reads it."""
    return {"unit": "neuron", "rule": "validation", "k": 5, "intervention": {"kind": "zero"},
            "split": {"n_prompts": 6, "n_tokens": 1200}, "feasible": True,
            "limits": {"ppl_rise": 0.05, "distinct2_drop": 0.1, "continuation_ppl_rise": 0.2},
            "search": [{"k": 5, "scale": None, "behaviour_mean": 0.03, "behaviour_rate": 0.0, "perplexity": 305.1,
                        "distinct2": 0.58, "continuation_perplexity": 219.5, "violations": []}]}


def test_selection_by_validation_is_checked_against_the_page(tmp_path: Path) -> None:
    """The loader's description of results.json must follow what the template reads; this guards the pair."""
    res = load_fixture("correct_results.json")
    res["selection"], res["probe"]["behaviour"] = _validation_selection(), {"metric": "toxicity score"}
    html = render_run(write_run(tmp_path / "ok", res)).read_text(encoding="utf-8")
    assert "Validation search (1 candidates)" in html
    del res["selection"]["limits"]
    with pytest.raises(ResultsError, match=r"selection has rule 'validation' but no 'limits'"):
        render_run(write_run(tmp_path / "limits", res))
    res["selection"] = _validation_selection()
    del res["selection"]["search"][0]["violations"]
    with pytest.raises(ResultsError, match=r"selection\.search\[0\] has no 'violations'"):
        render_run(write_run(tmp_path / "row", res))


def test_task_job_results_are_named(tmp_path: Path) -> None:
    res = {"schema_version": SCHEMA_VERSION, "job": "compress", "model": {"name": "m", "spec": "m"},
           "probe": {"name": "p", "description": "d"}, "baseline": {"perplexity": 30.0}, "manifest": {}}
    with pytest.raises(ResultsError, match=r"from a `safety-prune compress` run; .*audit and correct runs only"):
        render_run(write_run(tmp_path / "run", res))


def test_unusable_start_time_is_shown_as_unknown(tmp_path: Path) -> None:
    res = load_fixture("correct_results.json")
    res["manifest"]["started_unix"] = 1e300  # no calendar date: like a missing time, not a crash
    html = render_run(write_run(tmp_path / "run", res)).read_text(encoding="utf-8")
    assert "<tr><th>started, duration</th><td>unknown" in html


@pytest.mark.parametrize(("row", "problem"), [
    ({"split": "baseline", "prompt_index": 0, "score": float("nan")}, "line 2: score is nan"),
    ({"split": "baseline", "prompt_index": 0, "score": "0.9x"}, "line 2: score is the string '0.9x'"),
    ({"split": "baseline", "prompt_index": [0], "score": 0.5}, "line 2: prompt_index is an array"),
])
def test_hand_edited_samples_name_file_and_line(tmp_path: Path, row: dict[str, Any], problem: str) -> None:
    run = write_run(tmp_path / "run", load_fixture("correct_results.json"), [fixture_samples()[0], row])
    with pytest.raises(ResultsError) as info:
        render_run(run)
    assert str(info.value).startswith(f"{run / 'samples.jsonl'} {problem}")
    assert "delete it to render the report without examples" in str(info.value)


# ----------------------------------------------------------------------------------- comparison output

def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = load_fixture("correct_results.json")
    b = copy.deepcopy(a)
    b["manifest"]["seed"] = 1
    return write_run(tmp_path / "a", a, fixture_samples()), write_run(tmp_path / "b", b, fixture_samples())


@pytest.mark.parametrize("target", ["a/results.json", "b/results.json", "a/samples.jsonl", "b/report.html",
                                    "b/./circuit.json", "other/report.html"])
def test_compare_never_overwrites_a_run_file(tmp_path: Path, target: str) -> None:
    run_a, run_b = _two_runs(tmp_path)
    render_run(run_b)
    write_run(tmp_path / "other", load_fixture("audit_results.json"))  # a third run, not compared
    out = tmp_path / target
    before = out.read_bytes() if out.exists() else None
    with pytest.raises(OutputError, match=r"would replace .* which is part of that run"):
        render_compare(run_a, run_b, out)
    assert (out.read_bytes() if out.exists() else None) == before


def test_compare_into_a_directory_writes_compare_html(tmp_path: Path) -> None:
    run_a, run_b = _two_runs(tmp_path)
    (tmp_path / "pages").mkdir()
    assert render_compare(run_a, run_b, tmp_path / "pages") == tmp_path / "pages" / "compare.html"
    assert "run comparison" in (tmp_path / "pages" / "compare.html").read_text(encoding="utf-8")
    assert render_compare(run_a, run_b, run_a) == run_a / "compare.html"  # a run folder itself is fine
    (tmp_path / "blocked" / "compare.html").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"nowhere to write the comparison page"):
        render_compare(run_a, run_b, tmp_path / "blocked")


def test_compare_output_errors_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_a, run_b = _two_runs(tmp_path)
    kept = (run_a / "results.json").read_bytes()
    assert main(["report", "--compare", str(run_a), str(run_b), "--out", str(run_a / "results.json")]) == 2
    err = capsys.readouterr().err
    assert "would replace results.json of run A" in err and "Traceback" not in err
    assert (run_a / "results.json").read_bytes() == kept
    assert main(["report", "--compare", str(run_a), str(run_b), "--out",
                 str(run_a / "results.json" / "cmp.html")]) == 2  # under a file: cannot be written
    err = capsys.readouterr().err
    assert "Cannot write" in err and "Traceback" not in err

# --------------------------------------------------------------------------------------------- browser

def _chromium() -> str | None:
    return next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)


class _DevTools:
    """Just enough of a websocket client (RFC 6455) to speak the DevTools protocol, with no extra dependency."""

    def __init__(self, url: str, timeout: float = 30.0):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id, self.events = 0, []

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            buf += chunk
        return buf

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         struct.pack("!BH", 0x80 | 126, n) if n < 65536 else
                                         struct.pack("!BQ", 0x80 | 127, n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _message(self) -> dict[str, Any]:
        data = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            n = struct.unpack("!H", self._read(2))[0] if n == 126 else struct.unpack("!Q", self._read(8))[0] \
                if n == 127 else n
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 9:
                self._send_frame(10, payload)
            elif opcode == 8:
                raise ConnectionError("DevTools closed the connection")
            elif opcode in (0, 1):
                data += payload
                if b0 & 0x80:
                    return json.loads(data)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._send_frame(1, json.dumps(msg).encode())
        while True:
            reply = self._message()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout}s"
            self.events.append(self._message())

    def drain(self, seconds: float) -> None:
        self.sock.settimeout(seconds)
        try:
            while True:
                self.events.append(self._message())
        except TimeoutError:
            pass


def _chrome_args(chrome: str, profile: Path) -> list[str]:
    return [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", f"--user-data-dir={profile}"]


def _screenshot(chrome: str, page: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run([*_chrome_args(chrome, tmp_path / "profile-shot"), f"--screenshot={shot}",
                    "--window-size=1200,3000", page.as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 1
    non_white = float((pixels.min(axis=1) < 235).mean())
    assert non_white > 0.05, f"screenshot is nearly blank ({non_white:.1%} non-white)"


@contextmanager
def _devtools(chrome: str, page: Path, profile: Path) -> Iterator[tuple[_DevTools, str]]:
    """``page`` loaded in headless Chromium under DevTools (Network, Page and Log enabled): (client, session)."""
    proc = subprocess.Popen([*_chrome_args(chrome, profile), "--remote-debugging-port=0", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            assert time.monotonic() < deadline and proc.poll() is None, "chromium did not open a DevTools port"
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        dt = _DevTools(f"ws://127.0.0.1:{port}{path}")
        target = next(t for t in dt.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        sid = dt.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Network", "Page", "Log"):
            dt.call(f"{domain}.enable", session=sid)
        dt.events.clear()
        dt.call("Page.navigate", {"url": page.as_uri()}, session=sid)
        dt.wait_for("Page.loadEventFired")
        dt.drain(1.0)
        yield dt, sid
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _inspect(chrome: str, page: Path, tmp_path: Path) -> tuple[list[str], dict[str, Any], str, list[dict]]:
    """Load ``page`` under DevTools; return requested URLs, DOM facts, visible text and console entries."""
    with _devtools(chrome, page, tmp_path / "profile-devtools") as (dt, sid):
        facts = json.loads(dt.call("Runtime.evaluate", {"returnByValue": True, "expression": """JSON.stringify({
            scripts: document.querySelectorAll('script').length,
            imgs: document.querySelectorAll('img').length,
            handlers: document.querySelectorAll('[onerror],[onload]').length,
            pwned: window.__pwned || null,
            csp: (document.querySelector('meta[http-equiv="Content-Security-Policy"]') || {}).content || null,
        })"""}, session=sid)["result"]["value"])
        text = dt.call("Runtime.evaluate", {"returnByValue": True, "expression":
                       "document.querySelectorAll('details').forEach(d => d.open = true); document.body.innerText"},
                       session=sid)["result"]["value"]
        dt.drain(0.5)
        urls = [e["params"]["request"]["url"] for e in dt.events if e.get("method") == "Network.requestWillBeSent"]
        dialogs = [e for e in dt.events if e.get("method") == "Page.javascriptDialogOpening"]
        logs = [e["params"]["entry"] for e in dt.events if e.get("method") == "Log.entryAdded"]
        assert not dialogs, dialogs
        return urls, facts, text, logs


def test_browser_shows_payloads_as_text_and_fetches_nothing(tmp_path: Path) -> None:
    chrome = _chromium()
    if chrome is None:
        if os.environ.get("SAFETY_PRUNE_REQUIRE_BROWSER"):  # set by .ci/run: CI must not skip this check
            pytest.fail("chromium not found, and SAFETY_PRUNE_REQUIRE_BROWSER is set: install it "
                        "(apt-get install -y chromium); the CSP, no-fetch and no-script checks need it")
        pytest.skip("chromium not found (CI installs it: apt-get install -y chromium)")
    res, samples = _hostile()
    page = render_run(write_run(tmp_path / "run", res, samples))
    _screenshot(chrome, page, tmp_path)
    urls, facts, text, logs = _inspect(chrome, page, tmp_path)
    assert urls == [page.as_uri()], f"the page requested more than itself: {urls}"
    assert facts == {"scripts": 0, "imgs": 0, "handlers": 0, "pwned": None,
                     "csp": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"}
    for payload in (SCRIPT, IMG, NAME, FILE):
        assert payload in text
    assert not [e for e in logs if "Content Security Policy" in e.get("text", "")], logs


def test_browser_prints_on_a4_with_running_header_and_page_numbers(tmp_path: Path) -> None:
    """Printed (as PDF) the page is A4 and several pages long; the page margin boxes carry the run id and
    "page x of y" (Chromium reads them as @page margin rules); headings stay with what follows them."""
    chrome = _chromium()
    if chrome is None:
        if os.environ.get("SAFETY_PRUNE_REQUIRE_BROWSER"):
            pytest.fail("chromium not found, and SAFETY_PRUNE_REQUIRE_BROWSER is set: install it "
                        "(apt-get install -y chromium); the print checks need it")
        pytest.skip("chromium not found (CI installs it: apt-get install -y chromium)")
    page = render_run(write_run(tmp_path / "run", rich_results(), fixture_samples()))
    pdf = tmp_path / "report.pdf"
    subprocess.run([*_chrome_args(chrome, tmp_path / "profile-pdf"), "--no-pdf-header-footer",
                    f"--print-to-pdf={pdf}", page.as_uri()], capture_output=True, timeout=120, check=False)
    assert pdf.is_file(), "chromium wrote no PDF"
    boxes = re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", pdf.read_bytes())
    assert len(boxes) > 1, "the report should print on several pages"
    for w, h in boxes:  # A4 is 595.3 x 841.9 pt (US letter would be 612 x 792)
        assert abs(float(w) - 595.3) < 2 and abs(float(h) - 841.9) < 2, (w, h)
    with _devtools(chrome, page, tmp_path / "profile-print") as (dt, sid):
        dt.call("Emulation.setEmulatedMedia", {"media": "print"}, session=sid)
        facts = json.loads(dt.call("Runtime.evaluate", {"returnByValue": True, "expression": """JSON.stringify({
            margins: [...document.styleSheets].flatMap(s => [...s.cssRules]).filter(r => r instanceof CSSPageRule)
                .flatMap(r => [...(r.cssRules || [])]).map(m => [m.name, m.style.content]),
            h2: getComputedStyle(document.querySelector('h2')).breakAfter,
            figure: getComputedStyle(document.querySelector('figure')).breakInside,
            toc: document.querySelectorAll('nav#toc a').length,
        })"""}, session=sid)["result"]["value"])
    margins = dict(facts["margins"])
    run_id = re.search(r'id="run-id">([^<]+)<', page.read_text(encoding="utf-8")).group(1)
    assert margins.get("top-right") == f'"run {run_id}"', margins
    assert margins.get("bottom-right") == '"page " counter(page) " of " counter(pages)', margins
    assert facts["h2"] == "avoid" and facts["figure"] == "avoid" and facts["toc"] >= 9, facts
