"""Evaluation: generation, perplexity, fluency and bootstrap statistics."""

from .fluency import distinct_n, uniqueness_ratio
from .generation import Generation, generate, generate_detailed
from .perplexity import PerplexityResult, perplexity, sequence_perplexities
from .stats import behaviour_aggregates, bootstrap_ci, paired_bootstrap_diff, summarize

__all__ = [
    "Generation",
    "PerplexityResult",
    "behaviour_aggregates",
    "bootstrap_ci",
    "distinct_n",
    "generate",
    "generate_detailed",
    "paired_bootstrap_diff",
    "perplexity",
    "sequence_perplexities",
    "summarize",
    "uniqueness_ratio",
]
