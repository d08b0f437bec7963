"""The command line: exit codes, messages, and the merge and plan commands (no Ray)."""

import re

import pytest
import torch
from safetensors.torch import load_file

from time_ray.cli import main
from time_ray.core.checkpoints import save_atomic


def write(tmp_path, name, values):
    save_atomic({"w": torch.tensor(values), "logit_scale": torch.tensor(1.0)}, tmp_path / name)
    return str(tmp_path / name)


def test_merge_command_writes_the_merged_checkpoint(tmp_path, capsys):
    a, b = write(tmp_path, "a.safetensors", [1.0, 3.0]), write(tmp_path, "b.safetensors", [3.0, -1.0])
    base = write(tmp_path, "base.safetensors", [0.0, 0.0])
    out = tmp_path / "m.safetensors"
    assert main(["merge", a, b, "--output", str(out)]) == 0
    assert torch.equal(load_file(out)["w"], torch.tensor([2.0, 1.0]))
    assert main(["merge", a, b, "--base", base, "-t", "task_arithmetic", "--param", "lambda=0.5", "-o", str(out)]) == 0
    assert torch.equal(load_file(out)["w"], torch.tensor([2.0, 1.0]))
    assert main(["merge", a, b, "--weights", "0.25,0.75", "-o", str(out)]) == 0
    assert torch.allclose(load_file(out)["w"], torch.tensor([2.5, 0.0]))
    assert "merged 2 checkpoints" in capsys.readouterr().out


def test_merge_command_errors_are_one_paragraph_with_exit_code_2(tmp_path, capsys):
    a = write(tmp_path, "a.safetensors", [1.0])
    out = str(tmp_path / "m.safetensors")
    assert main(["merge", a, a, "-t", "ties", "-o", out]) == 2
    assert "--base: ties merges task vectors" in capsys.readouterr().err
    assert main(["merge", a, a, "-t", "tie", "-o", out]) == 2
    assert "Did you mean ties" in capsys.readouterr().err
    assert main(["merge", a, str(tmp_path / "nope.safetensors"), "-o", out]) == 2
    assert "nope.safetensors: no such file" in capsys.readouterr().err
    assert main(["merge", a, a, a, "-t", "slerp", "-o", out]) == 2
    assert "slerp" in capsys.readouterr().err


def test_bad_config_exits_2_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("stream: {order: randm}\n")
    assert main(["sweep", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("time-ray: error: stream.order: 'randm' is not allowed. Did you mean random?")
    assert not (tmp_path / "out").exists()


def test_plan_lists_trials_and_measured_gflops(capsys):
    assert (
        main(
            [
                "plan",
                "configs/quickstart.yaml",
                "--set",
                "budget.steps_per_task=10",
                "--set",
                "stream.builtin={adaptation_datasets: 2, heldout_datasets: 1, classes_per_dataset: 2, "
                "pretrain_classes: 2, train_per_class: 4, test_per_class: 2}",
                "--set",
                "stream.tasks=2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "quickstart: 3 trials x 2 tasks; 6 expert trainings, 4 unique after deduplication" in out
    assert "GFLOPs per step (measured" in out and "device-hours" in out and "storage: about" in out
    assert out.count("steps/task=10") == 3


def _fomo_root(tmp_path):
    from tests.helpers.real_data import write_fomo

    return write_fomo(tmp_path / "fomo")


def _other_arch_checkpoint(tmp_path):
    from time_ray.core.checkpoints import save_atomic
    from time_ray.core.models import create_model, state_dict_of

    save_atomic(state_dict_of(create_model("tiny-clip-wide")), tmp_path / "wide.safetensors")
    return ["--set", f"model.pretrained={tmp_path / 'wide.safetensors'}"]


def _another_sweeps_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sweep.json").write_text('{"name": "other", "fingerprint": "0123456789abcdef"}')
    return []


NEW_USER_MISTAKES = {  # case -> (config text or None for the quickstart, extra args, expected message)
    "malformed yaml": ("stream: {tasks: 4\nbudget: [\n", lambda p: [], r"not valid YAML at line \d+, column \d+"),
    "unknown strategy": (
        "policies: {presets: [], grid: {init: [emma]}}\n",
        lambda p: [],
        r"policies.grid.init\[0\]: 'emma' is not allowed. Did you mean ema\?",
    ),
    "unknown technique": (
        "policies: {presets: [], grid: {merge: [{technique: tie}]}}\n",
        lambda p: [],
        r"unknown merging technique 'tie'. Did you mean ties",
    ),
    "out-of-range prune": (
        "policies: {presets: [], grid: {merge: [{technique: ties, prune: 1.5}]}}\n",
        lambda p: [],
        r"policies.grid.merge\[0\].prune: must be in \[0, 1\), got 1.5",
    ),
    "missing data path": (
        None,
        lambda p: [
            "--set",
            "stream.benchmark=fomo",
            "--set",
            "model.pretrained=none",
            "--set",
            f"stream.data={{root: {p / 'no-such-dir'}}}",
        ],
        r"real data \(fomo\), option 'root'.*no-such-dir does not exist",
    ),
    "missing stream file": (
        None,
        lambda p: [
            "--set",
            "stream.benchmark=fomo",
            "--set",
            "model.pretrained=none",
            "--set",
            f"stream.data={{root: {_fomo_root(p)}, heldout: [pets], stream_file: {p / 'nope.json'}}}",
        ],
        r"stream_file.*nope.json does not exist",
    ),
    "another architecture": (
        None,
        _other_arch_checkpoint,
        r"tensor '[\w.]+' has shape \(16, 128\), the architecture expects \(12, 64\); it was saved from another",
    ),
    "another sweep's output": (None, _another_sweeps_output, r"holds the results of another sweep \('other'"),
}


@pytest.mark.parametrize("case", list(NEW_USER_MISTAKES))
def test_new_user_mistakes_get_one_paragraph_and_exit_2_before_ray(case, tmp_path, capsys, monkeypatch):
    text, extra, message = NEW_USER_MISTAKES[case]
    config = "configs/quickstart.yaml"
    if text is not None:
        config = str(tmp_path / "c.yaml")
        (tmp_path / "c.yaml").write_text(text)
    import ray

    started = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(1))  # Ray must not be reached
    code = main(["sweep", config, "--output", str(tmp_path / "out"), *extra(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and not started
    assert err.startswith("time-ray: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    if case != "another sweep's output":
        assert not (tmp_path / "out" / "sweep.json").exists()  # nothing claimed
