"""Merging techniques (docs/method.md §5). Each technique is a small registered unit that merges
checkpoints tensor by tensor, in fp32, over every parameter of both towers (logit_scale included); element-wise
techniques take each tensor in chunks of at most ``base.CHUNK`` entries, so memory stays O(experts x chunk).

Notation: theta_0 is the base model (the anchor), theta_k the experts, tau_k = theta_k - theta_0
their task vectors, w_k the weights a strategy asks for (uniform by default), lambda a scaling factor.
Towers: keys starting with ``visual.`` form the image tower, all other keys the text tower.

Modules: ``base`` (registry, ``Technique``, building from config), ``lines`` (the LiNeS option),
``basic`` (dense techniques), ``select`` (exact k-th values over a tower), ``sparse`` (TIES, DARE-TIES,
Breadcrumbs-TIES), ``towers`` (a technique per tower), ``spec`` (the spec layer; its ``svd`` module
defines TSV-M and Iso-C, techniques that exist only as specs). Importing this package registers every
technique.
"""

import time_ray.core.merging.spec  # noqa: F401,E402 (registers every spec, e.g. tsv_m, iso_c)
from time_ray.core.merging.base import TECHNIQUES, Technique, make_technique, register, technique_params, tower_of
from time_ray.core.merging.basic import MagMax, ModelStock, RandomPick, Slerp, TaskArithmetic, WeightAveraging
from time_ray.core.merging.sparse import BreadcrumbsTies, DareTies, Ties
from time_ray.core.merging.towers import Towers

# the public API: the techniques, their registry and how to build one from a config. The machinery
# (chunking, exact selection, kernels, the LiNeS option, the sparse-consensus base class) is imported
# from its module, e.g. time_ray.core.merging.select.kth_smallest.
__all__ = [
    "TECHNIQUES",
    "BreadcrumbsTies",
    "DareTies",
    "MagMax",
    "ModelStock",
    "RandomPick",
    "Slerp",
    "TaskArithmetic",
    "Technique",
    "Ties",
    "Towers",
    "WeightAveraging",
    "make_technique",
    "register",
    "technique_params",
    "tower_of",
]
