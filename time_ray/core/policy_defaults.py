"""The EMA-chain and 'all' settings a policy has when its config does not name them (docs/method.md §3-4),
in one place: ``strategies.Policy`` takes its defaults from here, and results tables and reports show
a setting only where it differs from these. Kept free of imports, so reading results needs no torch."""

from __future__ import annotations

EMA_WEIGHT: float | str = 0.5  # weight of the new expert in the EMA chain, or "running-mean"
EMA_WITH_BASE = True  # the chain starts at r_0 = theta_0 (False: r_1 = theta^s_1)
ALL_WITH_BASE = False  # deploy/init 'all' also merges theta_0 in
RECENCY = "uniform"  # weights of 'all' over experts (strategies.RECENCY_SCHEMES)

POLICY_DEFAULTS: dict[str, float | str | bool] = {
    "ema_weight": EMA_WEIGHT,
    "ema_with_base": EMA_WITH_BASE,
    "all_with_base": ALL_WITH_BASE,
    "recency": RECENCY,
}
