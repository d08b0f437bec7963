"""Merging techniques (TIME.md §5). Each technique is a small registered unit that merges
checkpoints tensor by tensor, in fp32, over every parameter of both towers (logit_scale included); element-wise
techniques take each tensor in chunks of at most ``base.CHUNK`` entries, so memory stays O(experts x chunk).

Notation: theta_0 is the base model (the anchor), theta_k the experts, tau_k = theta_k - theta_0
their task vectors, w_k the weights a strategy asks for (uniform by default), lambda a scaling factor.
Towers: keys starting with ``visual.`` form the image tower, all other keys the text tower.

Modules: ``base`` (registry, ``Technique``, building from config), ``lines`` (the LiNeS option),
``basic`` (dense techniques), ``select`` (exact k-th values over a tower), ``sparse`` (TIES, DARE-TIES,
Breadcrumbs-TIES), ``towers`` (a technique per tower). Importing this package registers every technique.
"""

from time_ray.core.merging.base import (
    BLOCK,
    DISJOINT,
    IMAGE_PREFIX,
    LINES,
    PARAM_ALIASES,
    RULES,
    TECHNIQUES,
    CascadeSum,
    Span,
    Technique,
    chunk_spans,
    config_name,
    derived_seed,
    make_technique,
    register,
    seeded_generator,
    technique_params,
    tower_of,
    uniform,
)
from time_ray.core.merging.basic import MagMax, ModelStock, RandomPick, Slerp, TaskArithmetic, WeightAveraging
from time_ray.core.merging.lines import LinesOption, lines_depths
from time_ray.core.merging.select import BracketSelect, RadixSelect, fraction_count, kth_smallest, magnitude_keys
from time_ray.core.merging.sparse import BreadcrumbsTies, DareTies, SparseConsensus, Ties
from time_ray.core.merging.towers import Towers

__all__ = [
    "BLOCK",
    "DISJOINT",
    "IMAGE_PREFIX",
    "LINES",
    "PARAM_ALIASES",
    "RULES",
    "TECHNIQUES",
    "BracketSelect",
    "BreadcrumbsTies",
    "CascadeSum",
    "DareTies",
    "LinesOption",
    "MagMax",
    "ModelStock",
    "RadixSelect",
    "RandomPick",
    "Slerp",
    "Span",
    "SparseConsensus",
    "TaskArithmetic",
    "Technique",
    "Ties",
    "Towers",
    "WeightAveraging",
    "chunk_spans",
    "config_name",
    "derived_seed",
    "fraction_count",
    "kth_smallest",
    "lines_depths",
    "magnitude_keys",
    "make_technique",
    "register",
    "seeded_generator",
    "technique_params",
    "tower_of",
    "uniform",
]
