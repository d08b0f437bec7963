"""The findings-t20-v2 configs run exactly the design pre-registered in
analysis/reports/findings-t20-v2/DESIGN.md ("What runs", "Techniques at the authors' defaults"): a config
edit that drops a policy, changes a technique's setting or lets a companion differ in more than its one
setting fails here before any sweep runs."""

from pathlib import Path

import pandas as pd
import yaml

from time_ray.analysis import build_report
from time_ray.analysis.companions import setting_of
from time_ray.config import expand_trials, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MAIN = CONFIGS / "findings-t20-v2.yaml"

# DESIGN.md's table: config.yaml of the authors' repository (pseudope/fomo_in_flux), ema_paint / zs_paint backbone_merge
PAPER = {
    "task_arithmetic": ("task_arithmetic", {"lambda": 1.0}),
    "ties": ("ties", {"lambda": 1.0, "prune": 0.7, "disjoint": "mean"}),
    "dare_ties": ("dare_ties", {"lambda": 1.0, "prune": 0.7, "disjoint": "mean", "seed": 0}),
    "breadcrumbs_ties": ("breadcrumbs_ties", {"lambda": 1.0, "prune": 0.7, "top": 0.01, "disjoint": "mean"}),
    "magmax": ("magmax", {"lambda": 1.0}),
    "lines": ("average", {"lines": "linear", "alpha": 0.5, "beta": 0.5}),
    "slerp": ("slerp", {"t": None}),  # t from the strategy's weights
    "model_stock": ("model_stock", {}),
    "random": ("random", {"lambda": 1.0, "seed": 0}),
}
BEYOND = {"tsv_m": ("tsv_m", {"alpha": 1.0}), "iso_c": ("iso_c", {"alpha": 1.0})}
TWO_MODEL = {"slerp", "model_stock"}  # refused with deploy all: the EMA chain only


def key(trial):
    p = trial.policy
    return (p.init, p.deploy, trial.merge, tuple(sorted(trial.merge_params.items())), p.recency, trial.multitask)


def merge_key(init, deploy, technique, params, recency="uniform"):
    return (init, deploy, technique, tuple(sorted(params.items())), recency, False)


def test_main_sweep_is_the_preregistered_design():
    cfg = load_config(MAIN)
    trials = expand_trials(cfg)
    assert list(cfg.seeds) == [0, 1, 2]
    assert cfg.stream.tasks == 20 and cfg.budget.steps_per_task == 60
    assert cfg.stream.builtin.known_exposure == 0.05  # the default calibration, not the first design's 1.0
    assert cfg.model.arch == "tiny-clip"
    assert {t.budget_steps for t in trials if not t.multitask} == {60}

    pairs = {
        merge_key(i, d, "average", {})
        for i in ("zs", "ft", "ema", "all", "ft-zs")
        for d in ("ft", "ema", "all", "ft-zs")
    }
    chain = {merge_key("ema", "ema", m, p) for m, p in [*PAPER.values(), *BEYOND.values()]}
    offline = {
        merge_key("zs", "all", m, p) for name, (m, p) in [*PAPER.items(), *BEYOND.items()] if name not in TWO_MODEL
    }
    opcm = {merge_key("zs", "opcm", "average", {}), merge_key("opcm", "opcm", "average", {})}
    recency = {merge_key("zs", "all", "average", {}, r) for r in ("linear", "exp")}
    assert (len(pairs), len(chain), len(offline)) == (20, 11, 9)  # + averaging from C: A 12, B 10
    for seed in (0, 1, 2):
        got = [key(t) for t in trials if t.seed == seed]
        assert len(got) == len(set(got)) == 20 + 11 + 9 + 2 + 2 + 1
        assert {k for k in got if not k[-1]} == pairs | chain | offline | opcm | recency
        assert sum(k[-1] for k in got) == 1  # the multitask reference


def setting(path: Path, tmp: Path) -> dict:
    """The setting `time-ray report` reads from a sweep directory's config.yaml (analysis.companions)."""
    (tmp / path.stem).mkdir()
    (tmp / path.stem / "config.yaml").write_text(yaml.safe_dump(load_config(path).to_dict(), sort_keys=False))
    return setting_of(tmp / path.stem)


def test_companions_differ_from_the_main_sweep_in_their_one_setting(tmp_path):
    main = setting(MAIN, tmp_path)
    expected = {
        "findings-t20-v2-noreplay.yaml": {"stream.mixture.current", "stream.mixture.replay"},
        "findings-t20-v2-compute.yaml": set(),  # pooled: the same setting, other budgets
        "findings-t20-v2-wide.yaml": {"model.arch"},
    }
    for name, keys in expected.items():
        cfg = load_config(CONFIGS / name)
        other = setting(CONFIGS / name, tmp_path)
        assert {k for k in main.keys() | other.keys() if main.get(k) != other.get(k)} == keys, name
        assert list(cfg.seeds) == [0, 1, 2], name
    compute = load_config(CONFIGS / "findings-t20-v2-compute.yaml")
    assert sorted({t.budget_steps for t in expand_trials(compute) if not t.multitask}) == [15, 240]


REPORT = Path(__file__).resolve().parent.parent / "analysis" / "reports" / "findings-t20-v2"
# the order of the README's regenerate command: the reference first, then those pooled with it, then the companions
SWEEPS = ["seed0", "seed1", "seed2", "ta01", "compute", "explain", "noreplay", "wide"]
# the pooled setting: 3 x 45 + 3 + 18 + 3 trials; 6 chains diverged (DESIGN.md "Deviations" 1)
FINISHED, EXPECTED = 153, 159


def test_the_checked_in_report_is_what_the_checked_in_tables_give(tmp_path):
    """The verdicts of analysis/reports/findings-t20-v2/summary.md (which its README and the project README
    quote) come out of the checked-in result tables with today's analysis code: a change to a finding's
    test that moves a verdict fails here until the report is regenerated."""
    paths = build_report([REPORT / "sweeps" / f"findings-t20-v2-{s}" for s in SWEEPS], tmp_path, formats="csv")
    assert (paths["finished"], paths["trials"]) == (FINISHED, EXPECTED)
    tables = {p.name: p for p in paths["tables"]}
    verdicts = pd.read_csv(tables["findings.csv"]).set_index("finding").verdict
    summary = (REPORT / "summary.md").read_text()
    assert [f"### Finding {n}: {v}" for n, v in verdicts.items()] == [
        line for line in summary.splitlines() if line.startswith("### Finding ")
    ]
    beyond = pd.read_csv(tables["beyond-the-paper.csv"])
    assert len(beyond) == 8 and all(f"| {r} |" in summary for r in beyond.reading)
