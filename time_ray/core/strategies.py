"""Initialization and deployment strategies (docs/method.md §2-4): independent functions of the pool.

theta^i_t (init) and theta^o_t (deploy) for timestep t, with M the policy's merging technique:

  init  zs: theta_0           ft: theta^s_{t-1}         ema: r_{t-1}
        all: M(theta^s_1..theta^s_{t-1}; theta_0)       ft-zs: M(theta^s_{t-1}, theta_0) with (1/2, 1/2)
        opcm: m_{t-1}
        (at t = 1 every init strategy is theta_0)
  deploy ft: theta^s_t         ema: r_t                  all: M(theta^s_1..theta^s_t; theta_0)
        ft-zs: M(theta^s_t, theta_0) with (1/2, 1/2)      opcm: m_t

EMA chain: r_0 = theta_0 (or, without theta_0, r_1 = theta^s_1) and
r_t = M(theta^s_t, r_{t-1}; anchor theta_0) with weights (w_t, 1 - w_t); w_t = 1/2 by default, or
1/t (``running-mean``). With averaging and w = 1/2: r_t = 2^-t theta_0 + sum_k 2^-(t-k+1) theta^s_k.

The weights reach the technique with the models: techniques that use them (averaging, and SLERP when its
``t`` is unset: t = the second model's weight, 1 - w_t in the chain, 1/2 for ``ft-zs``) follow the
strategy; techniques with their own coefficients (task arithmetic, TIES family, MagMax, Random, Model Stock, or
SLERP with ``t`` set) ignore them.

OPCM chain (beyond the paper; ``core.merging.spec.opcm``): m_1 = theta^s_1 and m_t = OPCM(m_{t-1},
theta^s_t; theta_0): each new task vector projected away from the dominant singular subspace of the merged
update so far, the sum rescaled to the mean task-vector norm. It has its own rule, so the policy's
merging technique M is not used by ``opcm`` (the chain's threshold is OPCM_ALPHA = 0.5, the paper's).
Like r_t, m_t is computed once per timestep and kept in the pool (with lambda_t and the mean norm).

Registry: each strategy is registered once per role (``INIT``, ``DEPLOY``) with its config name, a line
for ``time-ray list`` and its function of the first n experts (init at t draws on n = t - 1 of them,
deploy at t on n = t; with n = 0 every strategy is theta_0). The config is validated against the registry's
names (``INIT_STRATEGIES``, ``DEPLOY_STRATEGIES``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from time_ray.core import policy_defaults
from time_ray.core.checkpoints import Checkpoint
from time_ray.core.merging import Technique, WeightAveraging
from time_ray.core.merging.spec import task_vectors
from time_ray.core.merging.spec.opcm import OPCM_ALPHA, opcm_update, task_vector_norm
from time_ray.core.pool import CheckpointPool

RECENCY = {
    "uniform": lambda i: 1.0,
    "linear": lambda i: float(i),
    "sqrt": lambda i: math.sqrt(i),
    "quadratic": lambda i: float(i) ** 2,
    "cubic": lambda i: float(i) ** 3,
    "fifth": lambda i: float(i) ** 5,
    "tenth": lambda i: float(i) ** 10,
    "exp": lambda i: 2.0 ** (i - 1),
    "log": lambda i: math.log(i + 1),
}
RECENCY_SCHEMES = tuple(RECENCY) + tuple(f"{k}-reversed" for k in RECENCY if k != "uniform")


def recency_weights(n: int, scheme: str = "uniform") -> list[float]:
    """w_i proportional to f(i) for experts i = 1..n (oldest first), normalised to sum 1;
    ``<f>-reversed`` weights the oldest most."""
    base, reverse = (scheme[: -len("-reversed")], True) if scheme.endswith("-reversed") else (scheme, False)
    raw = [RECENCY[base](i) for i in range(1, n + 1)]
    if reverse:
        raw = raw[::-1]
    total = sum(raw)
    return [r / total for r in raw]


@dataclass(frozen=True)
class Policy:
    """One point of the policy space: init strategy x deploy strategy x merging technique, with the
    EMA-chain and 'all' settings (defaults and meanings: core.policy_defaults)."""

    init: str
    deploy: str
    technique: Technique = field(default_factory=WeightAveraging)
    ema_weight: float | str = policy_defaults.EMA_WEIGHT
    ema_with_base: bool = policy_defaults.EMA_WITH_BASE
    all_with_base: bool = policy_defaults.ALL_WITH_BASE
    recency: str = policy_defaults.RECENCY

    def new_expert_weight(self, t: int) -> float:
        if self.ema_weight == "running-mean":
            return 1.0 / (t + 1) if self.ema_with_base else 1.0 / t
        return float(self.ema_weight)


def ema_chain(policy: Policy, pool: CheckpointPool, t: int) -> Checkpoint:
    """r_t, computed once and kept in the pool, so each step costs one pairwise merge."""
    if t == 0 or (t == 1 and not policy.ema_with_base):
        return pool.base if t == 0 else pool.expert(1)
    kind = chain_name(policy)
    cached = pool.derived(kind, t)
    if cached is not None:
        return cached
    w = policy.new_expert_weight(t)
    r_t = policy.technique.merge(
        [pool.expert(t), ema_chain(policy, pool, t - 1)], [w, 1.0 - w], pool.base, pool.executor
    )
    return pool.put_derived(kind, t, r_t)


def chain_name(policy: Policy) -> str:
    """Pool name of an EMA chain: distinct for every setting that changes r_t."""
    settings = json.dumps(
        [policy.technique.name, policy.technique.params(), policy.ema_weight, policy.ema_with_base],
        sort_keys=True,
        default=str,
    )
    return "ema-" + hashlib.sha256(settings.encode()).hexdigest()[:8]


def opcm_name(alpha: float = OPCM_ALPHA) -> str:
    """Pool name of an OPCM chain (its only setting is the threshold alpha)."""
    return "opcm-" + hashlib.sha256(json.dumps([alpha]).encode()).hexdigest()[:8]


def _opcm_state(pool: CheckpointPool, t: int, alpha: float = OPCM_ALPHA) -> tuple[Checkpoint, float, float]:
    """(m_t, lambda_t, n_t) for t >= 1; m_t and (lambda_t, n_t) are kept in the pool, computed once."""
    if t == 1:
        first = pool.expert(1)
        return first, 1.0, task_vector_norm(task_vectors([first], pool.base)[0])
    kind = opcm_name(alpha)
    cached, scale = pool.derived(kind, t), pool.derived(f"{kind}-scale", t)
    if cached is not None and scale is not None:
        lam, mean_norm = scale["scale"].tolist()
        return cached, lam, mean_norm
    prev, lam_prev, mean_prev = _opcm_state(pool, t - 1, alpha)
    m_t, lam, mean_norm = opcm_update(prev, pool.expert(t), pool.base, lam_prev, mean_prev, t, alpha=alpha)
    pool.put_derived(f"{kind}-scale", t, {"scale": torch.tensor([lam, mean_norm], dtype=torch.float64)})
    return pool.put_derived(kind, t, m_t), lam, mean_norm


def opcm_chain(pool: CheckpointPool, t: int) -> Checkpoint:
    """m_t of the OPCM chain (m_0 = theta_0, m_1 = theta^s_1), each step computed once and kept in the pool."""
    return pool.base if t == 0 else _opcm_state(pool, t)[0]


def merge_all(policy: Policy, pool: CheckpointPool, n: int) -> Checkpoint:
    """M(theta^s_1..theta^s_n; theta_0), optionally with theta_0 as one more (oldest) model."""
    models = ([pool.base] if policy.all_with_base else []) + pool.experts(n)
    return policy.technique.merge(models, recency_weights(len(models), policy.recency), pool.base, pool.executor)


def with_zero_shot(policy: Policy, pool: CheckpointPool, expert: Checkpoint) -> Checkpoint:
    """M(theta^s, theta_0) with weights (1/2, 1/2): exactly 1/2 theta^s + 1/2 theta_0 for averaging."""
    return policy.technique.merge([expert, pool.base], [0.5, 0.5], pool.base, pool.executor)


StrategyFn = Callable[[Policy, CheckpointPool, int], Checkpoint]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy (docs/method.md §2-4): its config name, one line for ``time-ray list`` and
    ``weights(policy, pool, n)``, the model it builds from the first n >= 1 experts of the pool."""

    name: str
    description: str
    weights: StrategyFn


INIT: dict[str, Strategy] = {}  # theta^i_t, where training for task t starts
DEPLOY: dict[str, Strategy] = {}  # theta^o_t, the model served after task t
STRATEGIES = {"init": INIT, "deploy": DEPLOY}  # by role, as a config names them


def register(registry: dict[str, Strategy], name: str, description: str) -> Callable[[StrategyFn], StrategyFn]:
    """Decorator: registers the function under ``name`` in ``registry`` (``INIT`` or ``DEPLOY``); a name is
    registered once per registry."""

    def add(weights: StrategyFn) -> StrategyFn:
        if name in registry:
            raise ValueError(f"strategy {name!r} is already registered")
        registry[name] = Strategy(name, description, weights)
        return weights

    return add


@register(INIT, "zs", "theta_0: every task starts from the base model")
def zero_shot(policy: Policy, pool: CheckpointPool, n: int) -> Checkpoint:
    return pool.base


@register(INIT, "ft", "theta^s_{t-1}: the previous expert (sequential finetuning)")
@register(DEPLOY, "ft", "theta^s_t: the latest expert")
def latest_expert(policy: Policy, pool: CheckpointPool, n: int) -> Checkpoint:
    return pool.expert(n)


@register(INIT, "ema", "r_{t-1}: the EMA chain of experts merged with the technique")
@register(DEPLOY, "ema", "r_t: the EMA chain, r_t = M(theta^s_t, r_{t-1}) with weights (w, 1 - w)")
def ema(policy: Policy, pool: CheckpointPool, n: int) -> Checkpoint:
    return ema_chain(policy, pool, n)


@register(INIT, "all", "M(theta^s_1..theta^s_{t-1}; theta_0): every earlier expert merged (recency weights)")
@register(DEPLOY, "all", "M(theta^s_1..theta^s_t; theta_0): every expert so far merged (recency weights)")
def all_experts(policy: Policy, pool: CheckpointPool, n: int) -> Checkpoint:
    return merge_all(policy, pool, n)


@register(INIT, "ft-zs", "M(theta^s_{t-1}, theta_0): the previous expert merged half-half with the base")
@register(DEPLOY, "ft-zs", "M(theta^s_t, theta_0): the latest expert merged half-half with the base")
def latest_with_zero_shot(policy: Policy, pool: CheckpointPool, n: int) -> Checkpoint:
    return with_zero_shot(policy, pool, pool.expert(n))


@register(INIT, "opcm", "m_{t-1}: the OPCM chain (orthogonal projections; the technique is not used)")
@register(DEPLOY, "opcm", "m_t: the OPCM chain (orthogonal projections; the technique is not used)")
def opcm(policy: Policy, pool: CheckpointPool, n: int) -> Checkpoint:
    return opcm_chain(pool, n)


INIT_STRATEGIES = tuple(INIT)  # the names a config's init list may use, in registration order
DEPLOY_STRATEGIES = tuple(DEPLOY)


def strategy_weights(role: str, name: str, policy: Policy, pool: CheckpointPool, n: int) -> Checkpoint:
    """The model that the ``role`` ("init" or "deploy") strategy ``name`` builds from the first n experts;
    theta_0 when n = 0."""
    found = STRATEGIES[role].get(name)
    if found is None:
        raise ValueError(f"unknown {role} strategy {name!r}; allowed: {tuple(STRATEGIES[role])}")
    return pool.base if n == 0 else found.weights(policy, pool, n)


def init_weights(policy: Policy, pool: CheckpointPool, t: int) -> Checkpoint:
    """theta^i_t: where training for task t starts (from experts 1..t-1)."""
    return strategy_weights("init", policy.init, policy, pool, t - 1)


def deploy_weights(policy: Policy, pool: CheckpointPool, t: int) -> Checkpoint:
    """theta^o_t: the model served after task t (from experts 1..t; t = 0: the base model)."""
    return strategy_weights("deploy", policy.deploy, policy, pool, t)
