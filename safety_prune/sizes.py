"""Byte sizes as people write them (``2GB``, ``500MiB``) and back, with no heavy import.

Apart from ``preflight`` (which needs torch for its estimate) so that ``jobs/options.py`` can check
``--max-memory`` before torch loads: a bad size answers at once.
"""

from __future__ import annotations

import re

from .errors import ConfigError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.I)


def parse_size(text: str) -> int:
    """Bytes in ``text`` such as ``2GB`` (10^9), ``500MiB`` (2^20) or ``123456`` (plain bytes)."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"--max-memory {text!r} is not a size. Give a positive number with an optional unit: "
                          "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 2GB.")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size < 1:  # 0.5B would round down to a limit of 0 bytes that nothing fits
        raise ConfigError(f"--max-memory {text!r} is less than one byte. Give the memory attribution may use, "
                          "e.g. 16GB or 500MiB.")
    return size


def human(n: float) -> str:
    """``n`` bytes in decimal units, e.g. "1.5 GB"."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
