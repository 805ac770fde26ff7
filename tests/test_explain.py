"""What the report shows of a unit: its specificity and the layer-by-block heatmap of negative R_diff."""

from __future__ import annotations

import torch

from safety_prune.explain import heatmap, specificity


def test_heatmap_sums_the_negative_part_per_block() -> None:
    diff = torch.tensor([[-1.0, 2.0, -3.0, -4.0], [0.5, 0.5, -0.25, 0.0]])
    assert heatmap(diff, bins=2) == [[1.0, 7.0], [0.0, 0.25]]


def test_specificity_is_the_auroc_or_none() -> None:
    assert specificity(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert specificity(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5  # a tie separates nothing
    assert specificity(torch.tensor([]), torch.tensor([1.0])) is None
