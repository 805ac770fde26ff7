"""AttnLRP rules and the instance-scoped composite that applies them."""

from .composite import VARIANTS, lrp_composite

__all__ = ["VARIANTS", "lrp_composite"]
