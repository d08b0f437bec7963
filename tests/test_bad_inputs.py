"""Bad input and a bad environment, as careless users give them: every command answers with one line
naming the field, file or value and what was expected, exit code 2, no traceback, and a sweep claims
nothing (no output directory, or the existing one untouched). No Ray starts for any of these."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import one_line_error
from time_ray.cli import main
from time_ray.core.checkpoints import save_atomic

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--set",
    "stream.builtin={adaptation_datasets: 2, heldout_datasets: 1, classes_per_dataset: 2, "
    "pretrain_classes: 2, train_per_class: 4, test_per_class: 2}",
    "--set",
    "stream.tasks=2",
]


# (extra sweep arguments, what the message must say): each refused before the output is claimed
SWEEP_CASES = {
    "set value is not YAML": (["--set", "name=[unclosed"], ["--set name", "not valid YAML"]),
    "set into a list": (["--set", "seeds.first=1"], ["--set seeds.first", "seeds holds list", "not a mapping"]),
    "set into a scalar": (["--set", "name.x=1"], ["--set name.x", "name holds str"]),
    "set an empty path": (["--set", ".budget=1"], ["not a field path"]),
    "set without =": (["--set", "budget.steps_per_task"], ["expected key=value"]),
    "NaN mixture share": (["--set", "stream.mixture.pretrain=.nan"], ["stream.mixture.pretrain", "finite number"]),
    "infinite multiplier": (["--set", "budget.multipliers=[.inf]"], ["budget.multipliers[0]", "finite number"]),
    "NaN learning rate": (["--set", "training.lr=.nan"], ["training.lr", "finite number"]),
    "negative seed": (["--set", "seeds=[-1]"], ["seeds[0]", "[0, 2^31)", "-1"]),
    "repeated seed": (["--set", "seeds=[0, 0]"], ["seeds: 0 listed more than once"]),
    "negative stream seed": (["--set", "stream.seed=-3"], ["stream.seed", "-3"]),
    "repeated multiplier": (["--set", "budget.multipliers=[1, 1]"], ["budget.multipliers", "more than once"]),
    "huge batch": (["--set", "training.batch_size=100000000"], ["training.batch_size", "65536"]),
    "huge benchmark": (["--set", "stream.builtin.train_per_class=10000000"], ["stream.builtin:", "GiB"]),
    "huge image size": (["--set", "stream.builtin.image_size=100000"], ["stream.builtin.image_size", "512"]),
    "infinite search bound": (
        ["--set", "search={samples: 2, space: {lambda: [0, .inf]}}"],
        ["search.space.lambda", "finite numbers"],
    ),
    "string for a number": (["--set", "training.lr=fast"], ["training.lr", "expected a number"]),
    "unknown field": (["--set", "budget.step_per_task=5"], ["budget.step_per_task: unknown field", "steps_per_task"]),
    "too many workers": (["--set", "resources.workers_per_expert=100000"], ["resources.workers_per_expert"]),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_bad_sweep_input_is_one_line_and_claims_nothing(case, tmp_path, capsys):
    extra, expected = SWEEP_CASES[case]
    out = tmp_path / "out"
    code = main(["sweep", str(ROOT / "configs/quickstart.yaml"), "--output", str(out), *extra])
    one_line_error(capsys, code, *expected)
    assert not out.exists()


def test_bad_config_files(tmp_path, capsys):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    listing = tmp_path / "list.yaml"
    listing.write_text("- name: a\n- name: b\n")
    out = tmp_path / "out"
    one_line_error(capsys, main(["sweep", str(latin), "-o", str(out)]), str(latin), "not UTF-8")
    one_line_error(capsys, main(["sweep", str(listing), "-o", str(out)]), "expected a mapping of fields")
    one_line_error(capsys, main(["sweep", str(tmp_path), "-o", str(out)]), "a directory, not a file")
    one_line_error(capsys, main(["plan", str(latin)]), "not UTF-8")
    one_line_error(capsys, main(["data", "stats", str(listing)]), "expected a mapping of fields")
    assert not out.exists()


def test_bad_output_locations(tmp_path, capsys):
    config = str(ROOT / "configs/quickstart.yaml")
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    one_line_error(capsys, main(["sweep", config, "-o", str(a_file)]), "is a file, not a directory")
    one_line_error(capsys, main(["sweep", config, "-o", str(a_file / "out")]), "is a file, so no directory")
    # /sys refuses new files even to root (a chmod'ed directory would not stop root)
    one_line_error(capsys, main(["sweep", config, "-o", "/sys/time-ray-out"]), "cannot write in /sys")
    assert a_file.read_text() == "not a directory" and not Path("/sys/time-ray-out").exists()


def test_damaged_sweep_json_is_named_and_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text("{not json")
    code = main(["sweep", str(ROOT / "configs/quickstart.yaml"), "-o", str(out), "--resume", *SMALL])
    one_line_error(capsys, code, "sweep.json: damaged", "another --output")
    assert (out / "sweep.json").read_text() == "{not json" and sorted(os.listdir(out)) == ["sweep.json"]


def test_a_pt_file_without_a_state_dict(tmp_path, capsys):
    pt = tmp_path / "weights.pt"
    torch.save([1, 2, 3], pt)
    out = tmp_path / "out"
    code = main(
        ["sweep", str(ROOT / "configs/quickstart.yaml"), "-o", str(out), "--set", f"model.pretrained={pt}", *SMALL]
    )
    one_line_error(capsys, code, str(pt), "holds list, not a state dict")
    assert not out.exists()
    a = tmp_path / "a.safetensors"
    save_atomic({"w": torch.ones(2)}, a)
    one_line_error(capsys, main(["merge", str(a), str(pt), "-o", str(tmp_path / "m.safetensors")]), "not a state dict")


def test_merge_refuses_mismatched_tensors_and_bad_weights(tmp_path, capsys):
    def ckpt(name, **tensors):
        save_atomic(tensors, tmp_path / name)
        return str(tmp_path / name)

    a = ckpt("a.safetensors", w=torch.ones(4), b=torch.zeros(2))
    short = ckpt("short.safetensors", w=torch.ones(3), b=torch.zeros(2))
    half = ckpt("half.safetensors", w=torch.ones(4, dtype=torch.float16), b=torch.zeros(2))
    base = ckpt("base.safetensors", w=torch.zeros(2, 2), b=torch.zeros(2))
    out = tmp_path / "m.safetensors"
    for technique in ("average", "ties", "task_arithmetic", "magmax"):
        code = main(["merge", a, short, "--base", a, "-t", technique, "-o", str(out)])
        one_line_error(capsys, code, "tensor 'w'", "shape [3]", "shape [4]", "short.safetensors")
    one_line_error(capsys, main(["merge", a, half, "-o", str(out)]), "tensor 'w'", "dtype float16")
    one_line_error(
        capsys,
        main(["merge", a, a, "--base", base, "-t", "ties", "-o", str(out)]),
        "tensor 'w'",
        "theta_0",
        "shape [2, 2]",
    )
    one_line_error(capsys, main(["merge", a, a, "--weights", "nan,1", "-o", str(out)]), "nan is not a finite number")
    one_line_error(capsys, main(["merge", a, a, "--weights", "inf,1", "-o", str(out)]), "inf is not a finite number")
    one_line_error(capsys, main(["merge", a, a, "--weights", "half,half", "-o", str(out)]), "comma-separated numbers")
    one_line_error(
        capsys, main(["merge", a, a, "-o", str(tmp_path / "a.safetensors" / "m.safetensors")]), "a.safetensors"
    )
    assert not out.exists()


def test_report_on_damaged_or_missing_results(tmp_path, capsys):
    one_line_error(capsys, main(["report", str(tmp_path / "nothing")]), "no such directory")
    sweep = tmp_path / "sweep"
    (sweep / "trials" / "t1").mkdir(parents=True)
    (sweep / "sweep.json").write_text("{damaged")
    (sweep / "trials" / "t1" / "timesteps.parquet").write_bytes(b"PAR1 this is not parquet")
    one_line_error(capsys, main(["report", str(sweep)]), "timesteps.parquet: not a readable parquet file")


def test_the_installed_command_gives_one_line_too(tmp_path):
    """Through the console script users type, in a subprocess: no traceback on stderr, exit 2, and an
    internal error (a bug) is one line plus the log file holding its traceback."""
    command = Path(sys.executable).parent / "time-ray"
    out = tmp_path / "out"
    for args in (
        ["sweep", "configs/quickstart.yaml", "-o", str(out), "--set", "seeds=[0, 0]"],
        ["sweep", "configs/quickstart.yaml", "-o", str(out), "--set", "name=[x"],
        ["merge", "README.md", "-o", str(out)],
    ):
        proc = subprocess.run([str(command), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_an_internal_error_is_one_line_and_a_log_file(monkeypatch, tmp_path, capsys):
    import time_ray.cli as cli

    monkeypatch.setenv("HOME", str(tmp_path))

    def broken(args):
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(cli, "cmd_plan", broken)
    assert main(["plan", "configs/quickstart.yaml"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "internal error: ZeroDivisionError: a bug of ours" in err
    log = Path(err.split("traceback in ")[1].split(";")[0])
    assert log.is_file() and "Traceback" in log.read_text() and "broken" in log.read_text()
