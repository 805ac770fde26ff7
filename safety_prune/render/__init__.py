"""The HTML pages of a run: the report of one run, the comparison of two, and the task jobs' report.

``page`` holds the results loader, the view model and the renderers; ``charts`` draws the inline SVG plots.
The deployment gate lives in ``safety_prune.gate`` and never imports from here.
"""

from __future__ import annotations

from .page import load_results, load_samples, render_compare, render_report, render_run, render_task_report

__all__ = ["load_results", "load_samples", "render_compare", "render_report", "render_run", "render_task_report"]
