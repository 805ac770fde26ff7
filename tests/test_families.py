"""The family registry: one file per family, registered under its file's name."""

from __future__ import annotations

import pytest

from safety_prune.errors import UnsupportedArchitectureError
from safety_prune.families import FAMILIES, SUPPORTED, Architecture, family_of


@pytest.mark.parametrize("name", FAMILIES.names)
def test_each_family_file_defines_its_architecture(name: str) -> None:
    arch = FAMILIES.get(name)
    assert isinstance(arch, Architecture) and arch.family == name
    assert all(family_of(t) is arch for t in arch.model_types)


def test_an_unknown_model_type_lists_the_families() -> None:
    with pytest.raises(UnsupportedArchitectureError, match=f"'mamba' is not supported. Supported families: "
                                                            f"{SUPPORTED}"):
        family_of("mamba")
    assert SUPPORTED == "gemma3, gpt2, llama, opt, qwen2"
