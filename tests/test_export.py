"""`time-ray export`: a sweep directory written without Ray (config.yaml, trials.json, base.safetensors,
experts/ and pool/<trial>/ as the sweep lays them out), then experts and deployed models exported and
loaded by open_clip exactly as the --help says, compared with what the trial's policy deploys."""

import json
import shutil

import open_clip
import pytest
import torch
import yaml
from safetensors import safe_open

from time_ray.cli import main
from time_ray.config import expand_trials, load_config
from time_ray.core import models
from time_ray.core.checkpoints import materialize, save_atomic
from time_ray.core.errors import ConfigError, TimeRayError
from time_ray.core.pool import CheckpointPool
from time_ray.core.results import trials_json
from time_ray.core.strategies import deploy_weights
from time_ray.export import export_model, trial_from_json

TASKS = 3
GRID = (
    "policies.grid={init: [zs], deploy: [ft-zs, ema], merge: [{technique: ties, lambda: 0.7, prune: 0.3}], "
    "ema_weight: [running-mean]}"
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished 3-task sweep directory of five policies sharing three experts (two referenced from the
    expert cache, one stored in each pool), and its typed trials."""
    root = tmp_path_factory.mktemp("sweep")
    cfg = load_config("configs/quickstart.yaml", [f"stream.tasks={TASKS}", GRID])
    trials = expand_trials(cfg)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (root / "trials.json").write_text(trials_json(cfg.name, TASKS, trials))
    torch.manual_seed(0)
    base = models.state_dict_of(models.create_model("tiny-clip"))
    save_atomic(base, root / "base.safetensors")
    experts = []
    for t in range(1, TASKS + 1):
        g = torch.Generator().manual_seed(t)
        experts.append(
            {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in base.items()}
        )
        if t < TASKS:
            save_atomic(experts[-1], root / "experts" / f"e{t}.safetensors")
    for trial in trials:
        pool = CheckpointPool(root / "pool" / trial.trial_id, root / "base.safetensors")
        for t in range(1, TASKS):
            pool.link_expert(t, root / "experts" / f"e{t}.safetensors")
        pool.add_expert(TASKS, experts[-1])
    return root, trials, experts


def reference(sweep, trial, t, tmp_path):
    """theta^o_t by the in-memory policy, on a copy of the directory (the export never sees its EMA files)."""
    root, _, _ = sweep
    copy = tmp_path / "copy"
    if not copy.exists():
        shutil.copytree(root, copy)
    pool = CheckpointPool(copy / "pool" / trial.trial_id, copy / "base.safetensors")
    return materialize(deploy_weights(trial.policy, pool, t))


def load_with_open_clip(path):
    open_clip.add_model_config(models.MODEL_CONFIG_DIR)
    return open_clip.create_model("tiny-clip", pretrained=str(path)).state_dict()


def same(a, b):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=0, atol=0, msg=k)


def test_trials_json_entries_parse_back_to_the_same_policies(sweep):
    root, trials, _ = sweep
    entries = json.loads((root / "trials.json").read_text())["trials"]
    assert len(trials) == 5
    for trial, entry in zip(trials, entries):
        assert trial_from_json(entry) == trial


def test_exported_models_load_with_open_clip_and_equal_what_the_policy_deploys(sweep, tmp_path):
    root, trials, experts = sweep
    for trial in trials:
        for t in range(TASKS + 1):
            out = export_model(
                str(root), trial.trial_id, t, "deployed", str(tmp_path / f"{trial.trial_id}-{t}.safetensors")
            )
            same(load_with_open_clip(out["file"]), reference(sweep, trial, t, tmp_path))
    trial = next(t for t in trials if t.deploy == "ema")
    pt = export_model(str(root), trial.trial_id, 2, "deployed", str(tmp_path / "ema.pt"))
    same(load_with_open_clip(pt["file"]), reference(sweep, trial, 2, tmp_path))
    for t in (1, TASKS):  # a referenced expert and a stored one
        out = export_model(str(root), trials[0].trial_id, t, "expert", str(tmp_path / f"expert{t}.safetensors"))
        same(load_with_open_clip(out["file"]), experts[t - 1])
    with safe_open(out["file"], "pt") as f:
        assert f.metadata()["arch"] == "tiny-clip" and f.metadata()["timestep"] == str(TASKS)


def test_the_command_writes_the_default_file_and_says_how_to_load_it(sweep, capsys):
    root, trials, experts = sweep
    trial = trials[1]
    assert main(["export", str(root), "--trial", trial.trial_id, "--timestep", "2", "--expert"]) == 0
    path = root / "export" / f"{trial.trial_id}-t2-expert.safetensors"
    out = capsys.readouterr().out
    assert str(path) in out and "open_clip.create_model('tiny-clip', pretrained=" in out
    same(load_with_open_clip(path), experts[1])
    assert main(["export", str(root), "--trial", trial.trial_id, "-t", "1"]) == 0
    assert (root / "export" / f"{trial.trial_id}-t1-deployed.safetensors").is_file()


def test_mistakes_are_one_line_naming_what_exists(sweep, capsys, tmp_path):
    root, trials, _ = sweep
    trial = trials[0].trial_id
    with pytest.raises(ConfigError, match=rf"--trial '{trial[:-1]}': no such trial in .*Did you mean {trial}"):
        export_model(str(root), trial[:-1], 1)
    with pytest.raises(ConfigError, match=rf"--timestep 4: trial {trial} recorded timesteps 1..3 of 3; timestep 0"):
        export_model(str(root), trial, 4)
    with pytest.raises(ConfigError, match="--timestep 0: .*--deployed only"):
        export_model(str(root), trial, 0, "expert")
    with pytest.raises(ConfigError, match=r"--output x.txt: name a .safetensors, .pt, .pth, .bin file"):
        export_model(str(root), trial, 1, output="x.txt")
    assert main(["export", str(tmp_path / "nothing"), "--trial", "x", "-t", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist; give the --output directory of `time-ray sweep`" in err
    with pytest.raises(SystemExit):  # argparse: one or the other
        main(["export", str(root), "--trial", trial, "-t", "1", "--expert", "--deployed"])


def test_a_policy_name_that_one_trial_has_names_that_trial(sweep, tmp_path):
    root, trials, _ = sweep
    best = next(t for t in trials if t.name == "best-in-time")
    by_name = export_model(str(root), "best-in-time", 2, output=str(tmp_path / "a.safetensors"))
    by_id = export_model(str(root), best.trial_id, 2, output=str(tmp_path / "b.safetensors"))
    assert by_name["trial_id"] == best.trial_id
    same(load_with_open_clip(by_name["file"]), load_with_open_clip(by_id["file"]))
    # two trials of one policy (another seed, say): the name is ambiguous, the ids are listed
    copy = tmp_path / "two"
    shutil.copytree(root, copy)
    doc = json.loads((copy / "trials.json").read_text())
    doc["trials"].append({**best.to_json(), "trial_id": "best-in-time-average-00000000", "seed": 1})
    (copy / "trials.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"--trial 'best-in-time': 2 trials have that policy .* give one id: "):
        export_model(str(copy), "best-in-time", 2)


def test_an_expert_file_gone_from_the_directory_is_named_not_counted_as_unrecorded(sweep, tmp_path):
    """A sweep directory copied without experts/ (or one expert deleted): the message names the missing file
    and what brings it back, instead of 'recorded timesteps 1..1'."""
    root, trials, _ = sweep
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "experts" / "e2.safetensors").unlink()
    trial = trials[0].trial_id
    with pytest.raises(TimeRayError) as raised:
        export_model(str(copy), trial, 3)
    message = str(raised.value)
    assert message.startswith(f"--timestep 3: expert 2 of trial {trial} is missing: ")
    assert f"pool/{trial}/expert_002.ref names {copy / 'experts' / 'e2.safetensors'}, which is not there" in message
    assert "rerun the sweep with --resume" in message and "recorded timesteps" not in message
    export_model(str(copy), trial, 1, output=str(tmp_path / "t1.safetensors"))  # what is there still exports
