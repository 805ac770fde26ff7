"""The budget rule's perplexity readings against reading every candidate's, side by side on a finished run.

    python benchmarks/budget_search.py RUN_DIR [--json FILE]

RUN_DIR: a `correct --intervention proportional` run of the default model (make correct's, or a stability seed's).
On its ranking and grid, with correct's limits and validation text, two searches run in one process: reading
every candidate's validation perplexity (as ``--select-by budget`` did before it read only what can change its
choice; the cost rule still reads them all) and the budget rule as it ships. Generation is left out of both (a
candidate within the perplexity limit is taken to keep the other limits): it is the same in both, so what differs,
and is timed, is the perplexity readings. Prints the readings, seconds and their ratio, and whether both choose the
same setting; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from screening import gains_candidates, open_run


def main() -> None:
    from safety_prune.selection import search_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "budget_search.json")
    args = parser.parse_args()

    sc = open_run(args.run)
    _, candidates, _ = gains_candidates(sc)
    base = {"behaviour_mean": 1.0, "behaviour_rate": 1.0, "perplexity": sc.perplexity_of(sc.lm.model),
            "distinct2": 1.0, "continuation_perplexity": 1.0}
    result: dict = {"what": __doc__.split("\n\n")[0], "run": str(args.run), "candidates": len(candidates),
                    "validation_tokens": sc.n_tokens}
    for name, rule in (("every candidate", "cost"), ("budget rule", "budget")):
        seconds: list[float] = []

        def timed(model, seconds=seconds) -> float:
            start = time.perf_counter()
            ppl = sc.perplexity_of(model)
            seconds.append(time.perf_counter() - start)
            return ppl

        _, trail = search_settings(sc.lm, lambda _model: dict(base), candidates, sc.limits, timed, rule)
        within = [r for r in trail[1:] if r["perplexity"] is not None and not r["violations"]]
        chosen = max(within, key=lambda r: r["dampening"]) if rule == "cost" else \
            next((r for r in trail[1:] if r["generated"]), None)
        result[name] = {"readings": len(seconds), "seconds": round(sum(seconds), 1),
                        "chosen": None if chosen is None else {k: chosen[k] for k in ("strength", "reach")}}
        print(name, json.dumps(result[name]), flush=True)
    full, budget = result["every candidate"], result["budget rule"]
    result["time_ratio"] = round(full["seconds"] / budget["seconds"], 2)
    result["same_choice"] = full["chosen"] == budget["chosen"]
    print(f"budget rule: {budget['readings']} of {full['readings']} readings, {result['time_ratio']}x less time "
          f"reading; same choice: {result['same_choice']}")
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
