"""Byte sizes (``sizes.py``): what ``--max-memory`` accepts, and how a size is written back."""

from __future__ import annotations

import pytest

from safety_prune.errors import ConfigError
from safety_prune.sizes import human, parse_size


@pytest.mark.parametrize("text, expected", [("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("1.5GiB", 3 * 2**29),
                                            ("1024", 1024), ("64 kib", 65536)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1GB", "0", "2 parsecs", "1e9"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError, match=r"--max-memory .* is not a size"):
        parse_size(text)


def test_less_than_a_byte_is_refused():
    with pytest.raises(ConfigError, match=r"--max-memory '0.5B' is less than one byte"):
        parse_size("0.5B")


@pytest.mark.parametrize("n, text", [(512, "512 B"), (1500, "1.5 KB"), (2 * 10**9, "2.0 GB"), (3 * 10**12, "3.0 TB")])
def test_human(n, text):
    assert human(n) == text
