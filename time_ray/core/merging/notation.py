"""The notation every merging module shares, importing nothing of the package (docs/method.md §5): the two
towers, the transformer block of a key, LiNeS' depth functions, seeds derived from where they are used, the
strategy's weights w_k and the config names of parameters.

Towers: keys starting with ``visual.`` form the image tower, all other keys the text tower.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

import torch

IMAGE_PREFIX = "visual."
BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")
LINES = {"linear": lambda x: x, "quadratic": lambda x: x * x, "sqrt": math.sqrt}
PARAM_ALIASES = {"lambda": "lam"}  # config name -> attribute name


def tower_of(key: str) -> str:
    return "image" if key.startswith(IMAGE_PREFIX) else "text"


def derived_seed(*parts) -> int:
    """A reproducible 63-bit seed from the technique's seed and where it is used (expert, tensor)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def seeded_generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*parts))


def uniform(n: int) -> list[float]:
    return [1.0 / n] * n


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """The weights w_k as floats (uniform when None): one finite number per expert."""
    if weights is None:
        return uniform(n)
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} models")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise ValueError(f"weights must be finite numbers, got {bad[0]} in {weights}")
    return weights


def attribute_name(config_name: str) -> str:
    """A parameter's attribute name from its config name (``lambda`` -> ``lam``)."""
    return PARAM_ALIASES.get(config_name, config_name)
