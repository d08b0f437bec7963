from pathlib import Path

import pytest
import yaml

from time_ray.config import expand_policies, expand_trials, load_config
from time_ray.core.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_names_its_command(path, tmp_path_factory):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# time-ray sweep configs/" + path.name)
    overrides = []
    if path.name == "fomo-in-flux.yaml":  # its data paths are placeholders: a small tree in the authors' layout
        from tests.helpers.fomo_layout import fomo_overrides, write_authors_layout

        overrides = fomo_overrides(write_authors_layout(tmp_path_factory.mktemp("fomo_in_flux")))
        assert all(f"--set {o.split('=')[0]}=" in first for o in overrides)  # the command names them
    from tests.helpers.configs import TEMPLATES, template_overrides

    if path.name in TEMPLATES:  # the real-data templates: small data in their layouts (tests/test_config_templates.py)
        overrides = template_overrides(path.name, tmp_path_factory.mktemp(path.stem))
    cfg = load_config(path, overrides)
    assert expand_trials(cfg)


def test_quickstart_expands_to_the_three_named_policies():
    cfg = load_config("configs/quickstart.yaml")
    got = {(p["policy"], p["init"], p["deploy"], p["merge"]) for p in expand_policies(cfg)}
    assert got == {
        ("sequential-ft", "ft", "ft", "average"),
        ("offline-merge", "zs", "all", "average"),
        ("best-in-time", "ema", "ema", "average"),
    }
    ids = [t.trial_id for t in expand_trials(cfg)]
    assert len(set(ids)) == 3


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("stream: {tasks: 4\n", r"not valid YAML at line"),
        ("strem: {}\n", r"strem: unknown field. Did you mean stream\?"),
        ("stream: {order: randm}\n", r"stream.order: 'randm' is not allowed. Did you mean random\?"),
        ("stream: {tasks: 0}\n", r"stream.tasks: must be between 1 and 140"),
        ("budget: {steps_per_task: ten}\n", r"budget.steps_per_task: expected an integer, got 'ten'"),
        (
            "policies: {presets: [best-in-tim]}\n",
            r"policies.presets\[0\]: 'best-in-tim' is not allowed. Did you mean best-in-time",
        ),
        ("policies: {presets: [], grid: {init: [zz]}}\n", r"policies.grid.init\[0\]: 'zz' is not allowed"),
        ("policies: {presets: [], grid: {merge: [{technique: ties2}]}}\n", r"unknown merging technique 'ties2'"),
        ("policies: {presets: [], grid: {ema_weight: [1.5]}}\n", r"ema_weight\[0\]: must be in \(0, 1\]"),
        (
            "policies: {presets: [], grid: {ema_weight: [true]}}\n",
            r"^policies.grid.ema_weight\[0\]: must be in \(0, 1\] or 'running-mean', got True\.$",
        ),
        (
            "policies: {presets: [], grid: [{init: [ema]}, {ema_with_base: [1]}]}\n",
            r"^policies.grid\[1\].ema_with_base\[0\]: expected true or false, got 1\.$",
        ),
        (
            "policies: {presets: [], grid: {merge: [{prune: 0.2}]}}\n",
            r"^policies.grid.merge\[0\].technique: required\.$",
        ),
        (
            "policies: {presets: [], grid: {recency: [linaer]}}\n",
            r"^policies.grid.recency\[0\]: 'linaer' is not allowed. Did you mean linear\? Allowed: uniform, linear,",
        ),
        (
            "policies: {presets: [], grid: {inti: [zs]}}\n",
            r"^policies.grid.inti: unknown field. Did you mean init\? Allowed: init, deploy, merge, ema_weight,",
        ),
        (
            "policies: {presets: [], grid: 3}\n",
            r"^policies.grid: expected a mapping of init, deploy, merge, .*, got 3\.$",
        ),
        ("model: {arch: ViT-Q-99}\n", r"model.arch: unknown architecture 'ViT-Q-99'"),
        ("training: {lr: -1}\n", r"training.lr: must be > 0"),
    ],
)
def test_bad_input_names_the_field_and_what_is_allowed(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("configs/does-not-exist.yaml")


def test_set_overrides_and_grid_expansion(tmp_path):
    path = write(
        tmp_path,
        "policies:\n  presets: [best-in-time]\n  grid:\n    init: [zs, ft]\n    deploy: [ema]\n"
        "    merge: [{technique: task_arithmetic, lambda: [0.3, 1.0]}]\nseeds: [0, 1]\n",
    )
    cfg = load_config(path, ["budget.steps_per_task=7", "budget.multipliers=[1, 2]"])
    assert cfg.budget.steps_per_task == 7
    trials = expand_trials(cfg)
    assert len(trials) == (1 + 2 * 2) * 2 * 2
    assert {t.budget_steps for t in trials} == {7, 14}
    ta = next(t for t in trials if t.merge == "task_arithmetic")
    assert ta.policy.technique.lam in (0.3, 1.0)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["budget.steps_per_task"])


def test_multitask_reference_gets_the_whole_stream_budget():
    cfg = load_config("configs/quickstart.yaml", ["policies.multitask=true"])
    trials = expand_trials(cfg)
    multitask = [t for t in trials if t.multitask]
    assert len(trials) == 4 and len(multitask) == 1
    assert multitask[0].budget_steps == cfg.budget.steps_per_task * cfg.stream.tasks


def test_two_model_techniques_are_refused_with_the_all_strategy(tmp_path):
    for merge in ("{technique: slerp}", "{technique: model_stock}", "{technique: towers, image: slerp, text: average}"):
        path = write(tmp_path, f"policies:\n  presets: []\n  grid: {{init: [zs], deploy: [all], merge: [{merge}]}}\n")
        with pytest.raises(ConfigError, match=r"merge exactly two models, but the 'all' strategy"):
            load_config(path)


def test_a_list_of_grids_is_expanded_grid_by_grid(tmp_path):
    path = write(
        tmp_path,
        "policies:\n  presets: []\n  grid:\n    - {init: [ema], deploy: [ema], merge: [slerp]}\n"
        "    - {init: [zs], deploy: [all, ft]}\n    - {init: [zz]}\n",
    )
    with pytest.raises(ConfigError, match=r"policies.grid\[2\].init\[0\]: 'zz' is not allowed"):
        load_config(path)
    path = write(
        tmp_path,
        "policies:\n  presets: []\n  grid:\n    - {init: [ema], deploy: [ema], merge: [slerp]}\n"
        "    - {init: [zs], deploy: [all, ft]}\n",
    )
    got = [(p["init"], p["deploy"], p["merge"]) for p in expand_policies(load_config(path))]
    assert got == [("ema", "ema", "slerp"), ("zs", "all", "average"), ("zs", "ft", "average")]


def test_out_of_range_hyperparameters_name_the_grid_field(tmp_path):
    path = write(tmp_path, "policies:\n  presets: []\n  grid: {merge: [{technique: ties, prune: [0.2, 1.2]}]}\n")
    with pytest.raises(ConfigError, match=r"policies.grid.merge\[0\].prune: must be in \[0, 1\), got 1.2"):
        load_config(path)


def test_policy_space_config_reaches_every_strategy_technique_and_preset():
    from time_ray.core.merging import TECHNIQUES
    from time_ray.core.policy_space import PRESETS
    from time_ray.core.strategies import DEPLOY_STRATEGIES, INIT_STRATEGIES

    cfg = load_config("configs/policy-space.yaml")
    policies = expand_policies(cfg)
    assert {p["merge"] for p in policies} == set(TECHNIQUES)
    assert {(p["init"], p["deploy"]) for p in policies} >= {(i, d) for i in INIT_STRATEGIES for d in DEPLOY_STRATEGIES}
    assert set(cfg.policies.presets) | {"ema-merge"} == set(PRESETS)
    assert any(p.get("multitask") for p in policies)


def test_budget_units_resolve_to_steps_per_task():
    from time_ray.config import steps_per_task

    q = "configs/quickstart.yaml"
    base = ["budget.steps_per_task=null"]
    assert steps_per_task(load_config(q)) == 200
    assert steps_per_task(load_config(q, base + ["budget.samples_per_task=1000"])) == 16  # ceil(1000 / 64)
    # horizon rule: a fixed total, steps per task scale as 1 / T
    assert steps_per_task(load_config(q, base + ["budget.total_steps=800", "stream.tasks=4"])) == 200
    assert steps_per_task(load_config(q, base + ["budget.total_steps=800", "stream.tasks=8"])) == 100
    gflops = load_config(q, base + ["budget.gflops_per_task=50"])
    assert steps_per_task(gflops, flops_per_step=0.25e9) == 200
    trials = expand_trials(gflops, flops_per_step=0.5e9)
    assert {t.budget_steps for t in trials} == {100}


def test_budget_in_two_units_is_refused():
    with pytest.raises(ConfigError, match="budget: give one of .* not steps_per_task and total_steps"):
        load_config("configs/quickstart.yaml", ["budget.total_steps=800"])


def test_gflops_budget_measures_the_real_training_step(cache_dir):
    from time_ray.config import measure_flops_per_step, steps_per_task

    cfg = load_config(
        "configs/quickstart.yaml",
        [
            "budget.steps_per_task=null",
            "budget.gflops_per_task=100",
            "stream.builtin={adaptation_datasets: 2, heldout_datasets: 1, classes_per_dataset: 2, pretrain_classes: 2, "
            "train_per_class: 4, test_per_class: 2}",
        ],
    )
    flops = measure_flops_per_step(cfg)
    assert 1e8 < flops < 1e11  # tiny-clip, batch 64 of 32x32 images and 12-token captions
    assert steps_per_task(cfg, flops) == max(1, round(100e9 / flops))


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.batch_size=1.5", "training.batch_size: expected an integer, got 1.5."),
        ("training.batch_size='3'", "training.batch_size: expected an integer, got '3'."),
        ("training.batch_size=true", "training.batch_size: expected an integer, got True."),
        ("stream.builtin.seed=1.5", "stream.builtin.seed: expected an integer, got 1.5."),
        ("stream.builtin.seed='3'", "stream.builtin.seed: expected an integer, got '3'."),
        ("model.base_training.steps=true", "model.base_training.steps: expected an integer, got True."),
        ("training.lr=true", "training.lr: expected a number, got True."),
        ("stream.mixture.current='0.5'", "stream.mixture.current: expected a number, got '0.5'."),
        ("stream.builtin.adaptation_known=.inf", "stream.builtin.adaptation_known: expected a finite number, got inf."),
        ("name=3", "name: expected a string, got 3."),
        ("stream.order=5", "stream.order: expected a string, got 5."),
        ("resources.use_gpu=1", "resources.use_gpu: expected true or false, got 1."),
        ("seeds=[0, x]", "seeds[1]: expected an integer, got 'x'."),
        ("stream.data=[1]", "stream.data: expected a mapping, got [1]."),
        ("stream.mixture=5", "stream.mixture: expected a mapping of pretrain, current, replay, got 5."),
        ("stream.mixture.replays=0", "stream.mixture.replays: unknown field. Did you mean replay? Allowed: pretrain,"),
        ("model.base_training.stps=1", "model.base_training.stps: unknown field. Did you mean steps?"),
        ("stream.builtin.sed=1", "stream.builtin.sed: unknown field. Did you mean seed?"),
        ("search.method=grid", "search.method: 'grid' is not allowed. Allowed: sobol, random."),
        ("training.warmup=1", "training.warmup: must be in [0, 1), got 1."),
        ("resources.workers_per_expert=0", "resources.workers_per_expert: must be between 1 and 1024, got 0."),
        ("budget.multipliers=[1, -2]", "budget.multipliers[1]: must be > 0, got -2."),
        ("search.samples=-1", "search.samples: must be 0 or more, got -1."),
        ("stream.builtin.known_exposure=0", "stream.builtin.known_exposure: must be in (0, 1] (the fraction of each"),
        ("stream.builtin.known_exposure=1.5", "stream.builtin.known_exposure: must be in (0, 1]"),
    ],
)
def test_types_are_strict_and_errors_name_the_field(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("configs/quickstart.yaml", [override])
    assert str(info.value).startswith(message)


def test_lenient_where_yaml_needs_it_and_core_gets_its_dataclasses():
    from dataclasses import asdict

    from time_ray.config import SweepConfig
    from time_ray.core.base_model import BaseTraining
    from time_ray.core.benchmark import BenchmarkSpec
    from time_ray.core.stream import Mixture

    cfg = load_config(
        "configs/quickstart.yaml",
        [
            "seeds=3",
            "training.lr=1",
            "stream.mixture.pretrain=0",
            "policies.presets=best-in-time",
            "stream.builtin=null",
        ],
    )
    assert cfg.seeds == (3,) and cfg.policies.presets == ("best-in-time",)  # one value is a list of one
    assert type(cfg.training.lr) is float and type(cfg.stream.mixture.pretrain) is float  # ints widened
    assert cfg.stream.builtin == BenchmarkSpec()  # an empty section holds its defaults
    assert type(cfg.stream.mixture) is Mixture and type(cfg.model.base_training) is BaseTraining
    assert asdict(cfg.stream.builtin)["seed"] == 0 and asdict(cfg.training)["lr"] == 1.0
    built = SweepConfig(seeds=[1, 2], resources={"use_gpu": True}, stream={"builtin": {"seed": 5}})
    assert built.seeds == (1, 2) and built.resources.use_gpu and built.stream.builtin == BenchmarkSpec(seed=5)


def test_set_indexes_lists_in_a_field_path():
    from time_ray.config import apply_overrides

    raw = {"stream": {"data": {"datasets": [{"path": "a", "role": "adaptation"}, {"path": "b", "role": "adaptation"}]}}}
    apply_overrides(raw, ["stream.data.datasets[1].role=heldout"])
    assert [d["role"] for d in raw["stream"]["data"]["datasets"]] == ["adaptation", "heldout"]
    grids = "policies.grid=[{init: [zs], deploy: [ft]}, {init: [ft], deploy: [ft]}]"
    cfg = load_config("configs/quickstart.yaml", [grids, "policies.grid[1].deploy=[ema]", "seeds[0]=5"])
    assert cfg.policies.grids()[1].deploy == ("ema",) and cfg.seeds == (5,)
    for override, words in (
        ("policies.grid[2].init=[ft]", ["policies.grid has 2 item(s)", "[2] is out of range"]),
        ("name[0]=x", ["name holds str", "not a list"]),
        ("seeds.first=1", ["seeds holds list", "an item: --set seeds[0]=..."]),
        ("policies.grid[x]=1", ["not a field path", "datasets[1].role=heldout"]),
    ):
        with pytest.raises(ConfigError) as error:
            load_config("configs/quickstart.yaml", [grids, override])
        assert all(w in str(error.value) for w in words), str(error.value)


def test_execution_settings_are_written_but_change_no_fingerprint():
    """docs/config.md "Identity": resources, outputs, tracking and the name say how a sweep runs, not what it
    computes; config.yaml holds them all, the fingerprint none of them."""
    default = load_config("configs/quickstart.yaml")
    assert default.to_dict()["resources"]["merge_actors"] == 1 and default.to_dict()["outputs"] == {
        "predictions": "auto"
    }
    for change in (
        "resources.merge_actors=2",
        "resources.evaluators=0",
        "resources.workers_per_expert=2",
        "outputs.predictions=never",
        "tracking.mlflow=mlruns",
        "name=renamed",
    ):
        other = load_config("configs/quickstart.yaml", [change])
        assert other.to_dict() != default.to_dict() and other.fingerprint() == default.fingerprint(), change
    for change in ("training.lr=0.5", "seeds=[1]", "stream.tasks=3", "search.early_stopping.scheduler=asha"):
        assert load_config("configs/quickstart.yaml", [change]).fingerprint() != default.fingerprint(), change


def test_schema_version_is_written_and_only_this_one_is_read(tmp_path):
    from time_ray.core.results import SCHEMA_VERSION

    cfg = load_config("configs/quickstart.yaml")
    assert list(cfg.to_dict())[0] == "schema_version" and cfg.to_dict()["schema_version"] == SCHEMA_VERSION == 2
    written = tmp_path / "config.yaml"  # DIR/config.yaml reads back as the same config
    written.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert load_config(written) == cfg
    with pytest.raises(
        ConfigError, match=r"^schema_version: 3 is not one this time-ray reads; it reads and writes version 2"
    ):
        load_config(written, ["schema_version=3"])


def test_a_grid_is_typed_and_written_as_it_was_given(tmp_path):
    """policies.grid is a typed Grid (or several): a scalar stands for a list of one, defaults fill what is
    left out, and config.yaml (so the fingerprint) holds only what was given; trial ids are unchanged."""
    from time_ray.config import Grid

    cfg = load_config("configs/policy-space.yaml")
    grids = cfg.policies.grids()
    assert all(isinstance(g, Grid) for g in grids) and len(grids) == len(cfg.to_dict()["policies"]["grid"])
    raw = yaml.safe_load(Path("configs/policy-space.yaml").read_text())["policies"]["grid"]
    assert cfg.to_dict()["policies"]["grid"] == raw  # every grid of the file, as typed there
    assert {"ema-ema-ties-59bcddb7", "ema-ema-ties-67b32523"} <= {t.trial_id for t in expand_trials(cfg, 1e9)}
    one = load_config("configs/quickstart.yaml", ["policies.grid={init: ema, merge: [ties]}"])
    grid = one.policies.grids()[0]
    assert (grid.init, grid.deploy, grid.merge, grid.ema_weight) == (("ema",), ("ft",), ("ties",), None)
    assert one.to_dict()["policies"]["grid"] == {"init": ["ema"], "merge": ["ties"]}
    written = tmp_path / "config.yaml"
    written.write_text(yaml.safe_dump(one.to_dict(), sort_keys=False))
    assert load_config(written) == one


def test_merge_actors_is_checked():
    for bad in ("0", "1.5", "true"):
        with pytest.raises(ConfigError, match="resources.merge_actors"):
            load_config("configs/quickstart.yaml", [f"resources.merge_actors={bad}"])
