"""Evaluation: generation, perplexity, fluency and bootstrap statistics."""

from .fluency import distinct_n, uniqueness_ratio
from .generation import Generation, generate, generate_detailed
from .perplexity import PerplexityResult, perplexity, sequence_perplexities
from .stats import bootstrap_ci, paired_bootstrap_diff, summarize, toxicity_aggregates

__all__ = [
    "Generation",
    "PerplexityResult",
    "bootstrap_ci",
    "distinct_n",
    "generate",
    "generate_detailed",
    "paired_bootstrap_diff",
    "perplexity",
    "sequence_perplexities",
    "summarize",
    "toxicity_aggregates",
    "uniqueness_ratio",
]
