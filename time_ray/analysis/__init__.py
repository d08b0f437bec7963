"""The analysis layer of time-ray (docs/architecture.md "Layers"): results parquet -> tables, figures,
findings, report. Reads only the results schema (time_ray.core.results) and the sweep's config; never
imports Ray.

    from time_ray.analysis import build_report
    build_report("results/quickstart")   # -> results/quickstart/report/{report.html, summary.md, *.png}
    build_report("results/quickstart", formats=("csv", "latex"))   # -> .../report/tables/*.csv, *.tex

What the report writes, and when it withholds a verdict: docs/report.md.
"""

from time_ray.analysis.report import build_report

__all__ = ["build_report"]
