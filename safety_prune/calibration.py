"""Calibration windows for compression: general documents joined end to end and cut into fixed-length samples.

Why: one sample per short document gives each explained token little context and leaves most of a long
document unused. The paper calibrates on 2048-token windows of concatenated C4 text (Hatefi et al. 2025,
Sec. 4.1), and Wanda on the same; windows make the number of calibration tokens a setting of its own
(``window * n_windows``) instead of a product of document lengths.

The defaults, 32 windows of 512 tokens (16k tokens, what 128 documents of <= 128 tokens gave before), won on the
embedded model (``python benchmarks/tasks.py compress``): with token-wise L2 aggregation LRP reached 0.978x
Wanda's perplexity at 50% sparsity, against 1.228x for one sample per document. A model with fewer positions
gets windows of its ``max_position_embeddings``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .attribution import Sample
from .errors import ConfigError, DataSourceError

DEFAULT_WINDOW = 512
DEFAULT_N_WINDOWS = 32


def _start_tokens(tokenizer) -> list[int]:
    """The BOS token where the tokenizer puts one before a text, else nothing: each window starts like a text."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos] else []


def _separator(tokenizer) -> list[int]:
    """The token between two joined documents: EOS (else BOS), so that no document reads as the next's start."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    return [] if sep is None else [sep]


def window_for(model, window: int | None, spec: str) -> int:
    """The calibration window for ``model``: ``window`` as asked (refused when longer than the model's positions:
    it would index past a learned position table, or run where a rotary model was never trained), else
    ``DEFAULT_WINDOW`` or the model's positions where it has fewer."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return window or DEFAULT_WINDOW
    if window is None:
        return min(DEFAULT_WINDOW, limit)
    if window > limit:
        raise ConfigError(f"--window {window} is longer than the {limit} positions of --model {spec} "
                          f"(max_position_embeddings in its config). Use --window {limit} or less.")
    return window


def calibration_windows(tokenizer, texts: Sequence[str], window: int, n_windows: int, *,
                        up_to: bool = False) -> list[Sample]:
    """``n_windows`` samples of exactly ``window`` tokens (with ``up_to``, as many as the text holds if fewer, at
    least one); every next token is explained.

    The documents' tokens are joined in order with a separator after each; window i holds the start tokens plus
    the stream's i-th slice of ``window - len(start tokens)``. Only as many documents as needed are tokenized.
    """
    start = _start_tokens(tokenizer)
    body = window - len(start)
    if body < 8 or n_windows < 1:
        raise ConfigError(f"A calibration window needs at least {8 + len(start)} tokens and at least one window, "
                          f"got --window {window} and --n-windows {n_windows}.")
    need, sep = body * n_windows, _separator(tokenizer)
    stream: list[int] = []
    for text in texts:
        if len(stream) >= need:
            break
        stream += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + sep
    if up_to and len(stream) >= body:
        n_windows = min(n_windows, len(stream) // body)
    elif len(stream) < need:
        raise DataSourceError(
            f"--n-windows {n_windows} x --window {window} asks for {n_windows * window:,} calibration tokens, but "
            f"the general calibration text has only {len(stream):,} ({len(texts)} documents after the test and "
            f"validation parts), enough for {len(stream) // body} windows of {window}. Lower --n-windows or "
            "--window, or add text to general.source in the probe suite."
        )
    return [Sample(tuple(start + stream[i * body:(i + 1) * body]), 1) for i in range(n_windows)]
