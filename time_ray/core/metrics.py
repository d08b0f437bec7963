"""Stream metrics (docs/method.md §6): A_KA = mean over adaptation datasets, A_ZS = mean over held-out
datasets, GM = sqrt(A_KA * A_ZS)."""

from __future__ import annotations

import math


def summarize(records: list[dict]) -> dict[str, float]:
    """A_KA, A_ZS and GM from per-dataset records (``role`` and ``value`` keys)."""
    ka = [r["value"] for r in records if r["role"] == "adaptation"]
    zs = [r["value"] for r in records if r["role"] == "heldout"]
    a_ka = sum(ka) / len(ka) if ka else float("nan")
    a_zs = sum(zs) / len(zs) if zs else float("nan")
    return {"a_ka": a_ka, "a_zs": a_zs, "gm": geometric_mean(a_ka, a_zs)}


def geometric_mean(a_ka: float, a_zs: float) -> float:
    return math.sqrt(a_ka * a_zs) if a_ka >= 0 and a_zs >= 0 else float("nan")
