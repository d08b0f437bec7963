"""Files someone sends: a config, a sweep directory, a --set value. Each hostile one is refused with one line
naming the file and what is wrong, before it can expand, block, or make time-ray write outside the sweep
directory (docs/hostile-files.md)."""

import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers.synthetic import write_sweep
from time_ray.analysis.load import load_sweep
from time_ray.cli import main
from time_ray.config import SweepConfig, config_error, expand_trials, load_config, validate
from time_ray.core.checkpoints import save_atomic
from time_ray.core.errors import ConfigError, TimeRayError
from time_ray.core.results import trials_frame, write_parquet_atomic

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def one_line_error(capsys, code: int, *expected: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def laughs(levels: int) -> str:
    """The classic "billion laughs": ``levels`` anchors, each a list of ten aliases of the one before."""
    lines = ['lol0: &lol0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 10)}]")
    return "\n".join(lines) + f"\nname: *lol{levels}\n"


# ------------------------------------------------------------------------------------------- YAML limits


@pytest.mark.timeout(120)  # a guard against the expansion this test is about, not a timing assertion
def test_a_billion_laughs_config_is_refused_before_it_expands(tmp_path, capsys):
    config = tmp_path / "laughs.yaml"
    config.write_text(laughs(9))  # 10^9 strings once expanded
    assert len(config.read_bytes()) < 1000
    one_line_error(
        capsys,
        main(["plan", str(config)]),
        f"config {config}: uses YAML aliases that expand to more than 1,000,000 nodes.",
    )


def test_aliases_expanding_past_the_bound_are_refused_in_a_config_and_in_a_set_value(tmp_path):
    config = tmp_path / "laughs.yaml"
    config.write_text(laughs(6))  # 10^6 strings and their lists: just past the bound
    with pytest.raises(
        ConfigError, match=r"^config .*laughs.yaml: uses YAML aliases that expand to more than 1,000,000"
    ):
        load_config(config)
    with pytest.raises(
        ConfigError, match=r"^--set name: uses YAML aliases that expand to more than 1,000,000 nodes\.$"
    ):
        load_config(QUICKSTART, ["name=" + _flow_laughs(7)])


def _flow_laughs(levels: int) -> str:
    """A billion laughs on one line (a --set value): each anchored list holds ten aliases of the one before."""
    text = '&l0 ["lol"]'
    for i in range(1, levels + 1):
        text = f"&l{i} [{text}, " + ", ".join([f"*l{i - 1}"] * 9) + "]"
    return f"[{text}]"


def test_a_recursive_alias_and_deep_nesting_are_refused(tmp_path):
    from time_ray.core import safe_yaml

    with pytest.raises(
        ConfigError, match=r"^config X: holds a recursive YAML alias \(a value that contains itself\)\.$"
    ):
        safe_yaml.load("a: &a [1, *a]\n", "config X")
    with pytest.raises(ConfigError, match=r"^config X: nests values more than 100 levels deep\.$"):
        safe_yaml.load("[" * 150 + "]" * 150, "config X")
    with pytest.raises(ConfigError, match=r"^config X: nests values more than 100 levels deep\.$"):
        safe_yaml.load("[" * 5000 + "]" * 5000, "config X")


def test_a_repeated_key_is_refused_with_file_line_and_key(tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("name: first\nstream:\n  tasks: 2\n  seed: 1\n  tasks: 3\n")
    one_line_error(
        capsys,
        main(["plan", str(config)]),
        f"config {config}: line 5: key 'tasks' appears twice in one mapping (first at line 3)",
    )
    with pytest.raises(ConfigError, match=r"^--set policies\.grid: line 1: key 'init' appears twice"):
        load_config(QUICKSTART, ["policies.grid={init: [zs], init: [ft], deploy: [ft]}"])


def test_a_merge_key_may_still_be_overridden():
    from time_ray.core import safe_yaml

    text = "base: &base {x: 1, y: 2}\nmine:\n  <<: *base\n  x: 3\n"
    assert safe_yaml.load(text, "config X") == {"base": {"x": 1, "y": 2}, "mine": {"x": 3, "y": 2}}


def test_a_config_over_the_size_bound_is_refused_unread(tmp_path, capsys):
    config = tmp_path / "big.yaml"
    config.write_text("name: big\n" + "#" * (1 << 20) + "\n")
    one_line_error(
        capsys,
        main(["plan", str(config)]),
        f"config {config}: larger than 1 MiB, more than a config holds; refused before reading it whole.",
    )


def test_a_config_path_that_is_no_regular_file_is_named_for_what_it_is(tmp_path, capsys):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it would block until someone writes
    one_line_error(capsys, main(["plan", str(fifo)]), f"config {fifo}: not a regular file (a named pipe).")
    one_line_error(capsys, main(["plan", "/dev/zero"]), "config /dev/zero: not a regular file (a character device).")
    path = tmp_path / "s.yaml"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        one_line_error(capsys, main(["plan", str(path)]), f"config {path}: not a regular file (a socket).")
    one_line_error(capsys, main(["plan", str(tmp_path / "none.yaml")]), "none.yaml: no such file.")


def test_a_scalar_python_cannot_hold_is_one_line(tmp_path, capsys):
    config = tmp_path / "digits.yaml"
    config.write_text("seeds: [" + "9" * 5000 + "]\n")
    one_line_error(capsys, main(["plan", str(config)]), f"config {config}: holds a value that cannot be read")


def test_every_yaml_reader_goes_through_safe_yaml():
    readers = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "time_ray").rglob("*.py")
        if re.search(r"(?<![\w.])yaml\.(safe_)?load\(", path.read_text())
    }
    assert readers == set(), readers


# ------------------------------------------------------------------------------------------- long values


def test_a_long_value_is_quoted_cut_to_a_bounded_length():
    from pydantic import ValidationError

    long = "x" * 7_000_000
    with pytest.raises(ValidationError) as caught:
        SweepConfig.model_validate({"name": [long]})
    message = str(config_error(caught.value))
    assert message.startswith("name: expected a string, got ['xxx") and message.endswith("... (7,000,004 chars).")
    assert len(message) < 400
    long = "x" * 1_000_000  # through the YAML of --set
    with pytest.raises(ConfigError) as caught:
        load_config(QUICKSTART, [f"stream.benchmark={long}"])
    message = str(caught.value)
    assert message.startswith("stream.benchmark: 'xxx") and "... (1,000,002 chars) is not allowed." in message
    assert len(message) < 500
    with pytest.raises(ConfigError) as caught:
        load_config(QUICKSTART, [f"name=[unclosed {long}"])
    message = str(caught.value)
    assert (
        message.startswith("--set name: the value '[unclosed xxx") and "... (1,000,012 chars) is not valid" in message
    )
    assert len(message) < 600


def test_config_error_cuts_an_unknown_field_name(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        SweepConfig.model_validate({"stream": {"y" * 100_000: 1}})
    message = str(config_error(caught.value))
    assert message.startswith("stream.yyy") and "... (100,000 chars): unknown field." in message
    assert len(message) < 800


# ------------------------------------------------------------------------------------------- seeds


def test_repeated_seeds_among_a_hundred_thousand_are_named():
    seeds = list(range(100_000)) + [7, 99_999, 7]
    cfg = SweepConfig.model_validate({"seeds": seeds})
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert message.startswith("seeds: 7, 99999 listed more than once; each seed runs every policy once")
    assert "Got [0, 1, 2, 3," in message and "chars)." in message and len(message) < 800


# ------------------------------------------------------------------------------------------- sweep directories


BAD_ID = "../../../../../../../../../../tmp/x/pwn"


def hostile_sweep(root: Path, trial_id: str) -> Path:
    """A sweep directory as `time-ray sweep` lays it out (config.yaml, trials.json, base.safetensors) whose
    trials.json names its first trial ``trial_id``."""
    cfg = load_config(QUICKSTART)
    entries = [t.to_json() for t in expand_trials(cfg, flops_per_step=1.0)]
    entries[0]["trial_id"] = trial_id
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (root / "trials.json").write_text(json.dumps({"name": cfg.name, "tasks": 4, "trials": entries}))
    save_atomic({"w": torch.ones(2)}, root / "base.safetensors")
    return root


def test_export_refuses_a_trial_id_that_leaves_the_sweep_directory(tmp_path, capsys):
    outside = tmp_path / "a" / "x"  # where sweep/pool/../../../x/pwn and sweep/export/../../../x/pwn lead
    sweep = hostile_sweep(tmp_path / "a" / "b" / "sweep", "../../../x/pwn")
    code = main(["export", str(sweep), "--trial", "../../../x/pwn", "--timestep", "0"])
    one_line_error(
        capsys,
        code,
        f"sweep {sweep}/trials.json: trial id '../../../x/pwn' is not a trial id (letters, digits, '-', '_', '.' "
        "only; no path separators).",
    )
    assert not outside.exists() and not (sweep / "export").exists()
    code = main(["export", str(sweep), "--trial", "sequential-ft", "--timestep", "0"])  # any trial: the file is bad
    one_line_error(capsys, code, "trial id '../../../x/pwn' is not a trial id")


@pytest.mark.parametrize("trial_id", ["..", "a/b", "/abs", "a\\b", "", "ok\n"])
def test_export_refuses_other_ids_that_are_not_names(tmp_path, capsys, trial_id):
    sweep = hostile_sweep(tmp_path / "sweep", trial_id)
    one_line_error(capsys, main(["export", str(sweep), "--trial", "x", "--timestep", "0"]), "is not a trial id")


@pytest.mark.timeout(120)  # a guard: reading a FIFO blocks
def test_export_reads_config_yaml_with_the_yaml_limits(tmp_path, capsys):
    sweep = hostile_sweep(tmp_path / "sweep", "fine-id")
    (sweep / "config.yaml").write_text(laughs(9))
    trial = json.loads((sweep / "trials.json").read_text())["trials"][1]["trial_id"]
    code = main(["export", str(sweep), "--trial", trial, "--timestep", "0"])
    one_line_error(capsys, code, f"{sweep}/config.yaml: uses YAML aliases that expand to more than 1,000,000 nodes.")
    (sweep / "config.yaml").unlink()
    os.mkfifo(sweep / "config.yaml")
    code = main(["export", str(sweep), "--trial", trial, "--timestep", "0"])
    one_line_error(capsys, code, f"{sweep}/config.yaml: not a regular file (a named pipe).")


def test_a_report_refuses_trial_ids_that_are_not_names(tmp_path):
    out = tmp_path / "sweep"
    write_sweep(out)
    document = json.loads((out / "trials.json").read_text())
    document["trials"][0]["trial_id"] = BAD_ID
    (out / "trials.json").write_text(json.dumps(document))
    with pytest.raises(TimeRayError, match=rf"^sweep {out}/trials.json: trial id '{BAD_ID}' is not a trial id"):
        load_sweep(out)


def test_a_report_refuses_trial_ids_in_trials_parquet_and_in_the_rows(tmp_path):
    out = tmp_path / "sweep"
    trials = write_sweep(out)
    (out / "trials.json").unlink()
    rows = [{**t.columns(), "status": "finished", "last_timestep": 3} for t in trials]
    rows[1]["trial_id"] = "../elsewhere"
    write_parquet_atomic(trials_frame(rows), out / "trials.parquet")
    with pytest.raises(TimeRayError, match=rf"^sweep {out}/trials.parquet: trial id '../elsewhere' is not a trial id"):
        load_sweep(out)
    (out / "trials.parquet").unlink()
    import pandas as pd

    table = out / "trials" / trials[0].trial_id / "timesteps.parquet"
    frame = pd.read_parquet(table)
    frame["trial_id"] = "/etc"
    frame.to_parquet(table, index=False)
    with pytest.raises(TimeRayError, match=rf"^sweep {table}: trial id '/etc' is not a trial id"):
        load_sweep(out)


def test_the_ids_a_sweep_writes_pass_the_check(tmp_path):
    from time_ray.core.results import checked_trial_id

    cfg = load_config(ROOT / "configs" / "policy-space.yaml")
    for trial in expand_trials(cfg, flops_per_step=1.0):
        assert checked_trial_id(trial.trial_id, "DIR/trials.json") == trial.trial_id
