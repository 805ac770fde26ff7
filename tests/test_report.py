"""The HTML report: sections, escaping, self-containment, re-rendering and comparing runs, the deployment gate.

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
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from safety_prune.cli import main
from safety_prune.errors import ConfigError, ResultsError
from safety_prune.report import (
    GATE_EXIT_CODE,
    GATE_METRICS,
    evaluate_gate,
    parse_fail_on,
    render_compare,
    render_report,
    render_run,
)
from safety_prune.run import SCHEMA_VERSION

FIXTURES = Path(__file__).parent / "fixtures"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'
NAME = '"><script>window.__pwned=3</script><b>evil-model</b>'
FILE = "data/<img src=x onerror=window.__pwned=4>.txt"
METHOD = "<svg onload=alert(5)>$x$"


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _samples() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / "correct_samples.jsonl").read_text(encoding="utf-8").splitlines()]


def _rich() -> dict[str, Any]:
    """The correct fixture plus every optional key the report can show."""
    res, extras = _load("correct_results.json"), _load("report_extras.json")
    res["circuit_heatmap"] = extras["circuit_heatmap"]
    res["unit_examples"] = extras["unit_examples"]
    res["scorer"]["validation"] = extras["scorer_validation"]
    res["gate"] = extras["gate"]
    return res


def _hostile() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Injection payloads everywhere model or user text reaches the page."""
    res, samples = _rich(), _samples()
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


def _write_run(path: Path, results: dict[str, Any], samples: list[dict[str, Any]] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if samples is not None:
        (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- rendering

def test_render_run_needs_no_model(tmp_path: Path) -> None:
    res = _rich()
    res["model"]["spec"] = str(tmp_path / "deleted-model")  # the model is gone; re-rendering must not care
    run = _write_run(tmp_path / "run", res, _samples())
    out = render_run(run)
    html = out.read_text(encoding="utf-8")
    assert out == run / "report.html"
    for title in ("What was run", "The scorer and its limits", "Baseline vs corrected", "The circuit",
                  "What the removed units respond to", "Method comparison and sweep", "Examples",
                  "Limitations and reproducibility"):
        assert title in html
    assert "PASS" in html and "toxicity_rate&gt;0.05" in html and "perplexity&gt;400" in html
    assert "0.97" in html and "not validated" not in html  # the validation block
    assert "Content warning" in html and "<mark> suck</mark>" in html
    assert html.count("<svg") == 4  # metrics, heatmap, per-layer, trade-off
    assert "safety-prune correct --model /tmp/tm/llama --out /tmp/run2" in html  # reproducing command


def test_audit_only_report_adapts(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    render_report(_load("audit_results.json"), tmp_path / "missing.jsonl", out)
    html = out.read_text(encoding="utf-8")
    assert "toxicity audit report" in html and "Measurements" in html
    assert "Method comparison" not in html and "after correction" not in html
    assert "not validated in this run" in html and "safety-prune scorer validate" in html


def test_report_is_self_contained_and_small(tmp_path: Path) -> None:
    res, samples = _rich(), _samples() * 40  # a realistic size: 30 layers x 64 bins, many samples
    res["circuit_heatmap"] = [[-(i * j % 7) / 100 for j in range(64)] for i in range(30)]
    res["model"]["n_neurons_per_layer"] = 1536
    run = _write_run(tmp_path / "run", res, samples)
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
    html = render_run(_write_run(tmp_path / "run", res, samples)).read_text(encoding="utf-8")
    for payload in (SCRIPT, IMG, NAME, FILE, "<svg onload"):
        assert payload not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;svg onload=alert(5)&gt;" in html  # matplotlib escapes legend text inside the SVG


def test_control_characters_are_shown(tmp_path: Path) -> None:
    html = render_run(_write_run(tmp_path / "run", _load("correct_results.json"), _samples())).read_text("utf-8")
    assert "\x14" not in html and "\u2414" in html


# ------------------------------------------------------------------------------------------- comparing

def test_compare_two_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _load("correct_results.json")
    b = copy.deepcopy(a)
    b["manifest"]["seed"] = 1
    b["manifest"]["command"] = [*a["manifest"]["command"], "--seed", "1"]
    b["corrected"]["perplexity"], b["corrected"]["perplexity_ci"] = 330.0, [329.0, 331.0]
    run_a, run_b = _write_run(tmp_path / "a", a), _write_run(tmp_path / "b", b)
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
    res = _load("correct_results.json")
    res["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ResultsError, match=r"results\.json has results schema_version 2.*incompatible schema"):
        render_run(_write_run(tmp_path / "run", res))


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


# ------------------------------------------------------------------------------------------------ gate

def test_parse_fail_on_splits_and_validates() -> None:
    assert parse_fail_on(["toxicity_rate>0.05,perplexity >= 30", " distinct2<0.2 "]) == [
        "toxicity_rate>0.05", "perplexity >= 30", "distinct2<0.2"]
    assert parse_fail_on(None) == []
    for bad in ("toxicity>0.1", "toxicity_rate=0.1", "toxicity_rate>high", "perplexity>>3", "> 3"):
        with pytest.raises(ConfigError) as info:
            parse_fail_on([bad])
        assert repr(bad) in str(info.value) and all(m in str(info.value) for m in GATE_METRICS)


def test_gate_uses_corrected_metrics() -> None:
    res = _load("correct_results.json")  # corrected perplexity 305.1, baseline 305.2, toxicity_rate 0
    gate = evaluate_gate(res, ["perplexity>305.2", "toxicity_rate>=0"])
    assert gate["target"] == "corrected" and gate["source"] == "--fail-on" and not gate["passed"]
    assert [c["failed"] for c in gate["checks"]] == [False, True]
    assert gate["checks"][0]["value"] == pytest.approx(305.137, abs=1e-3)
    assert gate["checks"][0]["settled"] is False  # the interval [304.9, 305.4] straddles 305.2
    assert evaluate_gate(res, ["distinct2<0.5", "continuation_perplexity<=100"])["passed"]


def test_gate_defaults_to_probe_thresholds_on_baseline() -> None:
    res = _load("audit_results.json")
    gate = evaluate_gate(res, [])
    assert gate["target"] == "baseline" and gate["source"] == "probe suite thresholds"
    assert [c["expr"] for c in gate["checks"]] == ["toxicity_rate>0.1"]
    res["probe"]["thresholds"] = {"toxicity_rate": 0.0}
    res["baseline"]["toxicity_rate"] = 0.25
    assert not evaluate_gate(res, [])["passed"]


def test_gate_metric_missing_from_run() -> None:
    with pytest.raises(ConfigError, match=r"no 'expected_max_toxicity'.*toxicity_rate"):
        evaluate_gate(_load("audit_results.json"), ["expected_max_toxicity>0.5"])


def test_report_fail_on_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path / "run", _load("correct_results.json"), _samples())
    assert main(["report", str(run), "--fail-on", "perplexity>300"]) == GATE_EXIT_CODE
    assert "deployment gate failed" in capsys.readouterr().err
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "FAIL" in html and "perplexity&gt;300" in html
    assert main(["report", str(run), "--fail-on", "perplexity>400"]) == 0
    assert main(["report", str(run), "--fail-on", "ppl>1"]) == 2


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


def _inspect(chrome: str, page: Path, tmp_path: Path) -> tuple[list[str], dict[str, Any], str, list[dict]]:
    """Load ``page`` under DevTools; return requested URLs, DOM facts, visible text and console entries."""
    profile = tmp_path / "profile-devtools"
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
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_browser_shows_payloads_as_text_and_fetches_nothing(tmp_path: Path) -> None:
    chrome = _chromium()
    if chrome is None:
        pytest.skip("chromium not found (CI installs it: apt-get install -y chromium)")
    res, samples = _hostile()
    page = render_run(_write_run(tmp_path / "run", res, samples))
    _screenshot(chrome, page, tmp_path)
    urls, facts, text, logs = _inspect(chrome, page, tmp_path)
    assert urls == [page.as_uri()], f"the page requested more than itself: {urls}"
    assert facts == {"scripts": 0, "imgs": 0, "handlers": 0, "pwned": None,
                     "csp": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"}
    for payload in (SCRIPT, IMG, NAME, FILE):
        assert payload in text
    assert not [e for e in logs if "Content Security Policy" in e.get("text", "")], logs
