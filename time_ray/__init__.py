"""time-ray: a toolkit and distributed simulator for temporal model merging (TIME, CVPR 2025)."""

__version__ = "0.1.0"
