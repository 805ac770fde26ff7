"""The pages of a run: the report of one run, the comparison of two, the task jobs' report, the model card.

These package functions are the only way in. Inside: ``load`` reads and checks results.json and samples.jsonl,
``facts`` and ``words`` state its numbers and sentences, ``page`` and ``compare`` build the two pages' views,
``card`` the saved model's README, ``charts`` the inline SVG plots, ``templates`` the jinja2 environment.
The verdict is ``gate.verdict``'s: the deployment gate lives in ``safety_prune.gate`` and never imports from here.
"""

from __future__ import annotations

from .card import model_card
from .compare import render_compare
from .load import load_results, load_samples
from .page import render_report, render_run, render_task_report

__all__ = ["load_results", "load_samples", "model_card", "render_compare", "render_report", "render_run",
           "render_task_report"]
