"""LiNeS (Wang et al. 2025): layer-dependent scaling of a merged task vector, as an option of a technique.
The formula is the spec's (``spec.dense.lines_scale``); this option only applies it."""

from __future__ import annotations

from typing import ClassVar

from time_ray.core.merging.spec.dense import lines_depths, lines_scale

__all__ = ["LinesOption", "lines_depths"]


class LinesOption:
    """LiNeS (Wang et al. 2025) as an option of a task-vector technique: with ``lines`` set, the merged
    task vector of a tensor in ``transformer.resblocks.l.`` (l of L blocks of its tower) is scaled by
    alpha + beta * f(l / (L - 1)), f = identity (linear), square (quadratic) or sqrt; every other tensor
    by alpha. This replaces lambda. ``alpha`` and ``beta`` are unused while ``lines`` is null."""

    # set by the technique this option is mixed into (annotations only: no dataclass fields here)
    lines: str | None
    alpha: float
    beta: float
    needs_base: ClassVar[bool]

    def uses_base(self) -> bool:
        return self.needs_base or self.lines is not None

    def scale(self, key: str, depths: dict[str, int] | None) -> float:
        if self.lines is None:
            return getattr(self, "lam", 1.0)
        assert depths is not None, "prepare() computes the depths whenever lines is set"
        return lines_scale(key, depths, self.lines, self.alpha, self.beta)

    def prepare(self, experts, base, executor):
        return lines_depths(experts[0]) if self.lines is not None else None

    def params(self) -> dict:
        params = super().params()  # type: ignore[misc]  # the technique's own params
        if self.lines is None:  # inactive: keeps params (and trial ids) of plain techniques unchanged
            for name in ("lines", "alpha", "beta"):
                params.pop(name)
        return params
