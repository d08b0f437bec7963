from time_ray.config import load_config
from time_ray.plan import make_plan


def plan_of(overrides, path="configs/quickstart.yaml"):
    return make_plan(load_config(path, overrides), flops_per_step=2e9, model_bytes=1000, device_tflops=1.0)


def test_quickstart_shares_the_first_expert_only():
    plan = plan_of(["stream.tasks=4"])
    # task 1: theta_0 for all three policies (1 expert); tasks 2-4: ft chain, ema chain, theta_0 (3 each)
    assert plan["expert_trainings"] == 12 and plan["unique_experts"] == 1 + 3 * 3
    assert plan["train_gflops"] == 10 * 200 * 2.0
    assert plan["device_hours"] == 10 * 200 * 2.0 / 1e3 / 3600


def test_zs_init_trains_each_task_once_whatever_the_technique(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "policies:\n  presets: []\n  grid:\n    init: [zs]\n    deploy: [ft, ema, all, ft-zs]\n    merge:\n"
        "      - average\n      - {technique: task_arithmetic, lambda: [0.3, 1.0]}\n"
        "      - {technique: ties, prune: [0.2, 0.7]}\n      - dare_ties\n      - magmax\n      - random\n"
        "stream: {tasks: 5}\n"
    )
    plan = plan_of([], path)
    assert plan["trials"] == 4 * 8 and plan["expert_trainings"] == 32 * 5 and plan["unique_experts"] == 5


def test_settings_that_change_the_init_change_the_experts(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "policies:\n  presets: []\n  grid:\n    init: [ema]\n    deploy: [ft, ema]\n"
        "    ema_weight: [0.5, running-mean]\nstream: {tasks: 3}\n"
    )
    plan = plan_of([], path)
    # deploy does not change what ema init trains; the ema weight does: 1 + 2 chains x 2 tasks
    assert plan["unique_experts"] == 1 + 2 * 2


def test_storage_counts_each_unique_expert_once_plus_the_ema_chains():
    from time_ray.config import load_config
    from time_ray.plan import make_plan

    cfg = load_config("configs/quickstart.yaml")  # 3 trials x 4 tasks; best-in-time keeps r_1..r_4
    plan = make_plan(cfg, flops_per_step=1e9, model_bytes=1)
    assert plan["storage_bytes"] == plan["unique_experts"] + 4 + 1


def test_plan_shows_the_data_and_the_base_model(capsys):
    from time_ray.cli import main

    assert main(["plan", "configs/quickstart.yaml"]) == 0
    out = capsys.readouterr().out
    assert "base model: builtin (tiny-clip pretrained on the built-in pretraining pool;" in out
    assert "data: 21 datasets, 240 classes" in out and "heldout-00           heldout" in out
    assert "stream: 4 tasks of 35 (dataset, class) pairs" in out and "  task 4: adapt-10+++" in out
    assert out.index("trials:") < out.index("best-in-time-average-")


def test_plan_checks_theta_0_as_the_sweep_does(capsys, tmp_path):
    """A missing checkpoint, a checkpoint of another architecture and a tag that is not the
    architecture's fail `plan` as they would fail `sweep` (exit 2, one line naming model.pretrained)."""
    import torch
    from safetensors.torch import save_file

    from time_ray.cli import main

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    for pretrained, words in (
        (str(tmp_path / "missing.safetensors"), ["missing.safetensors"]),
        (str(other), ["other.safetensors"]),
        ("laion2b_s34b_b88k", ["tiny-clip"]),
    ):
        assert main(["plan", "configs/quickstart.yaml", "--set", f"model.pretrained={pretrained}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("time-ray: error: ") and all(w in err for w in words), err
    assert main(["plan", "configs/quickstart.yaml", "--set", "model.pretrained=none"]) == 0
    captured = capsys.readouterr()
    assert "base model: none" in captured.out and "starts at chance" in captured.err


def test_plan_lines_tell_apart_every_trial_of_one_policy_name():
    """Two trials of one policy name that differ in a chain setting only (ema_weight, recency) read
    differently in `plan`'s trial list: the setting that tells them apart is shown, the others are not."""
    from time_ray.config import expand_trials
    from time_ray.plan import trial_lines

    trials = expand_trials(load_config("configs/policy-space.yaml"))
    lines = dict(zip((t.trial_id for t in trials), trial_lines(trials)))
    ties = [t for t in trials if t.name == "ema/ema" and t.merge == "ties"]
    assert {t.policy.ema_weight for t in ties} == {0.5, "running-mean"}
    for t in ties:
        assert lines[t.trial_id].endswith(f" seed=0 ema_weight={t.policy.ema_weight}"), lines[t.trial_id]
    without_ids = {}
    for t in trials:  # no two lines of one name read the same once their ids are taken away
        without_ids.setdefault(t.name, []).append(lines[t.trial_id].split(maxsplit=1)[1])
    assert all(len(set(shown)) == len(shown) for shown in without_ids.values())
    quickstart = expand_trials(load_config("configs/quickstart.yaml"))  # one trial per name: nothing added
    assert all(line.endswith("seed=0") for line in trial_lines(quickstart))
