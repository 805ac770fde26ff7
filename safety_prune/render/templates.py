"""The jinja2 environment of every page (templates in the top-level ``reports/``) and writing a page the user
asked for.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ..errors import OutputError
from ..io import write_text
from ..resources import resource_dir
from .facts import as_count, fmt, pct, pvalue, signed


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(resource_dir("reports"))),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters |= {"num": fmt, "signed": signed, "pct": pct, "pvalue": pvalue, "count": as_count,
                    "lowerfirst": lambda s: str(s)[:1].lower() + str(s)[1:]}
    return env


def write_page(out: Path, html: str) -> None:
    """Write a page the user asked for; an unusable location is an OutputError, not a traceback."""
    try:
        write_text(out, html)
    except OSError as exc:
        raise OutputError(f"Cannot write {out} ({exc.strerror or exc}). Choose a writable location.") from None


def markdown() -> Environment:
    """The environment of Markdown templates (the model card): nothing is HTML-escaped, blocks take their line."""
    env = Environment(loader=FileSystemLoader(str(resource_dir("reports"))), autoescape=False,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters |= {"g": lambda v: f"{v:g}", "g4": lambda v: f"{v:.4g}", "s4": lambda v: f"{v:+.4g}",
                    "pvalue": pvalue}
    return env
