"""Merging techniques (docs/method.md §5). Each technique is a small registered unit that merges
checkpoints tensor by tensor, in fp32, over every parameter of both towers (logit_scale included); element-wise
techniques take each tensor in chunks of at most ``base.CHUNK`` entries, so memory stays O(experts x chunk).
Two implementations: the spec layer (``spec``, the readable reference) and one executor (``executor``, on
the ``kernels``); docs/merging.md.

Notation: theta_0 is the base model (the anchor), theta_k the experts, tau_k = theta_k - theta_0
their task vectors, w_k the weights a strategy asks for (uniform by default), lambda a scaling factor.
Towers: keys starting with ``visual.`` form the image tower, all other keys the text tower.

Modules: ``notation`` (towers, seeds, weights), ``base`` (registry, ``Technique``, building from config),
``lines`` (the LiNeS option), ``basic`` (dense techniques), ``sparse`` (TIES, DARE-TIES, Breadcrumbs-TIES:
declarations), ``towers`` (a technique per tower), ``executor`` (chunking, thresholds, caches, kernels),
``scorers``, ``select`` (exact k-th values over a tower), ``kernels``, ``spec`` (the spec layer; its ``svd``
module defines TSV-M and Iso-C, techniques that exist only as specs, registered by ``spec_technique``).
Importing this package registers every technique.
"""

import time_ray.core.merging.spec  # noqa: F401,E402 (registers every spec)
import time_ray.core.merging.spec_technique  # noqa: F401,E402 (registers the spec-only techniques, e.g. tsv_m)
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
