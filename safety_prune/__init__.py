"""safety_prune: find the circuit behind an unwanted LLM behaviour with LRP, prune it, prove it."""

__version__ = "0.1.0"
