"""The command line: exit codes, messages, and the merge and plan commands (no Ray)."""

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
    assert main(["plan", "configs/quickstart.yaml", "--set", "budget.steps_per_task=10",
                 "--set", "stream.builtin={adaptation_datasets: 2, heldout_datasets: 1, classes_per_dataset: 2, "
                 "pretrain_classes: 2, train_per_class: 4, test_per_class: 2}", "--set", "stream.tasks=2"]) == 0
    out = capsys.readouterr().out
    assert "quickstart: 3 trials x 2 tasks; 6 expert trainings, 4 unique after deduplication" in out
    assert "GFLOPs per step (measured" in out and "device-hours" in out and "storage: about" in out
    assert out.count("steps/task=10") == 3
