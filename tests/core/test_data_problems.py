"""Data problems found before anything runs, all at once: every unreadable image (header check, cached),
classes never evaluated or never trained on, every dataset that breaks a rule of the catalog; held-out
sets read as test images only."""

import json
import logging
import os

import pandas as pd
import pytest
from PIL import Image

from time_ray.cli import main
from time_ray.core.errors import ConfigError
from time_ray.core.real_data import load_real_benchmark, validate_real_data
from time_ray.core.real_data import problems as problems_module
from time_ray.core.real_data.problems import check_images, class_problems


def png(path, colour=(200, 30, 30), size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_classes(root, classes, n):
    for k, name in enumerate(classes):
        for i in range(n):
            png(root / name / f"{i}.png", (40 * k, 10 * i, 90))


def count_opens(monkeypatch) -> list:
    opened: list = []
    real = Image.open

    def counting(fp, *args, **kwargs):
        opened.append(str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return opened


# ------------------------------------------------------------------------------------------ the image check


def test_every_unreadable_image_is_found_with_its_reason(tmp_path):
    good = tmp_path / "good.png"
    png(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "x.jpg"
    text.write_text("not an image\n")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.png"
    Image.new("1", (10_000, 7_000)).save(huge)  # 70 M pixels in a small file: refused from its header
    missing = tmp_path / "gone.png"
    found = dict(check_images([good, empty, text, fifo, huge, missing]))
    assert set(found) == {str(p) for p in (empty, text, fifo, huge, missing)}
    assert found[str(empty)] == "empty file (0 bytes)"
    assert found[str(text)] == "not an image PIL can open"
    assert found[str(fifo)] == "not a regular file (a named pipe)"
    assert found[str(huge)] == "10000x7000 pixels, more than 64,000,000"
    assert "No such file" in found[str(missing)]


def test_the_check_reads_headers_only(tmp_path, monkeypatch):
    png(tmp_path / "a.png")
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the check decoded pixels"))
    assert check_images([tmp_path / "a.png"]) == []


def test_a_second_check_of_unchanged_files_opens_none_and_a_changed_file_is_checked_again(tmp_path, monkeypatch):
    paths = [tmp_path / f"{i}.png" for i in range(5)]
    for p in paths:
        png(p)
    (tmp_path / "bad.jpg").write_text("text")
    paths.append(tmp_path / "bad.jpg")
    opened = count_opens(monkeypatch)
    first = check_images(paths)
    assert first == [(str(tmp_path / "bad.jpg"), "not an image PIL can open")] and len(opened) == 6
    opened.clear()
    assert check_images(list(reversed(paths))) == first  # same files, any order: the cached verdict
    assert opened == []
    png(tmp_path / "bad.jpg")  # repaired: size and modification time change
    assert check_images(paths) == [] and len(opened) == 6
    opened.clear()
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: checked again
    assert check_images(paths) == [] and len(opened) == 6


def test_the_verdict_is_cached_in_the_time_ray_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TIME_RAY_CACHE", str(tmp_path / "cache"))
    png(tmp_path / "a.png")
    check_images([tmp_path / "a.png"])
    (entry,) = (tmp_path / "cache" / "image-checks").iterdir()
    assert entry.suffix == ".json" and json.loads(entry.read_text())["unreadable"] == []


def test_a_long_check_logs_progress_with_elapsed_time_and_eta(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(problems_module, "QUIET_SECONDS", 0.0)
    monkeypatch.setattr(problems_module, "CHUNK", 2)
    paths = [tmp_path / f"{i}.png" for i in range(20)]
    for p in paths:
        png(p)
    with caplog.at_level(logging.INFO, logger="time_ray"):
        check_images(paths, workers=1)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    progress = [line for line in lines if line.startswith("image check: headers of") and "elapsed" in line]
    assert progress and any("ETA" in line for line in progress), lines
    assert any("20 images done in" in line for line in lines), lines


# ------------------------------------------------------------------------------------------ class problems


def test_classes_never_evaluated_or_never_trained_are_all_listed(tmp_path):
    root = tmp_path / "d"
    write_classes(root / "train", ["a", "b", "c"], 2)
    write_classes(root / "train", ["single"], 1)
    write_classes(root / "test", ["a", "b"], 1)
    write_classes(root / "test", ["only_tested"], 1)
    bench, _ = load_real_benchmark("folders", {"datasets": [{"name": "d", "path": str(root)}]}, 8)
    found = class_problems(bench)
    assert found.untested == ["d: c", "d: single"]
    assert found.single == [
        "d: only tested (its image is in test: never trained on)",
        "d: single (its image is in train: never evaluated)",
    ]
    assert found.untrained == ["d: only tested"]
    assert found.unreadable == [] and found.error() is None
    warnings = found.warnings()
    assert len(warnings) == 3
    assert warnings[0] == "2 classes without test images (never evaluated): d: c, d: single"


def test_every_dataset_without_test_images_is_named_in_one_error(tmp_path):
    rows = []
    for dataset in ("cars", "pets", "ships"):
        for i in range(2):
            png(tmp_path / f"{dataset}{i}.png")
            rows.append(
                {"image": f"{dataset}{i}.png", "caption": "x", "classname": "k", "dataset": dataset, "split": "train"}
            )
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    named = r"'cars' \(adaptation\), 'pets' \(adaptation\), 'ships' \(adaptation\)\."
    with pytest.raises(ConfigError, match=r"3 datasets have no test images \(they are evaluated\): " + named):
        validate_real_data("table", {"path": str(tmp_path / "t.csv")})


def test_every_class_folder_without_images_is_named_in_one_error(tmp_path):
    write_classes(tmp_path / "d", ["a"], 3)
    for name in ("b", "c"):
        (tmp_path / "d" / name).mkdir()
    with pytest.raises(ConfigError, match=r"2 class folders hold no images .*: .*/d/b, .*/d/c\."):
        validate_real_data("folders", {"datasets": [{"path": str(tmp_path / "d")}]})


# ------------------------------------------------------------------------------------------ held-out sets


def test_a_heldout_folder_without_split_is_all_test_images(tmp_path):
    write_classes(tmp_path / "learn", ["a", "b"], 5)
    write_classes(tmp_path / "held", ["x", "y"], 6)
    datasets = [{"path": str(tmp_path / "learn")}, {"path": str(tmp_path / "held"), "role": "heldout"}]
    bench, _ = load_real_benchmark("folders", {"datasets": datasets}, 8)
    held = bench.datasets["held"].classes
    assert len(bench.train_indices(held)) == 0 and len(bench.test_indices(held)) == 12


def test_a_heldout_folder_with_split_reads_its_test_split_only(tmp_path):
    write_classes(tmp_path / "learn", ["a", "b"], 5)
    write_classes(tmp_path / "held" / "train", ["x", "y"], 4)
    write_classes(tmp_path / "held" / "test", ["x", "y"], 2)
    datasets = [{"path": str(tmp_path / "learn")}, {"path": str(tmp_path / "held"), "role": "heldout"}]
    bench, _ = load_real_benchmark("folders", {"datasets": datasets}, 8)
    held = bench.datasets["held"].classes
    assert len(bench.train_indices(held)) == 0 and len(bench.test_indices(held)) == 4
    held_paths = [p for p in bench.test_images.paths if (tmp_path / "held") in p.parents]
    assert len(held_paths) == 4 and all((tmp_path / "held" / "test") in p.parents for p in held_paths)


@pytest.mark.parametrize("split", [False, True])
def test_a_heldout_table_dataset_has_test_images_only(tmp_path, split):
    rows = []
    for dataset in ("cars", "pets"):
        for i in range(5):
            png(tmp_path / f"{dataset}{i}.png")
            row = {"image": f"{dataset}{i}.png", "caption": f"c{i}", "classname": f"k{i % 2}", "dataset": dataset}
            if split:
                row["split"] = "test" if i < 2 else "train"
            rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    bench, _ = load_real_benchmark("table", {"path": str(tmp_path / "t.csv"), "heldout": ["pets"]}, 8)
    pets = bench.datasets["pets"].classes
    assert len(bench.train_indices(pets)) == 0 and len(bench.test_indices(pets)) == (2 if split else 5)


# ------------------------------------------------------------------------------------------ the commands


def folders_tree(root):
    write_classes(root / "shapes", ["red", "green"], 6)
    write_classes(root / "tones", ["blue", "cyan"], 6)
    write_classes(root / "known", ["red", "blue"], 6)


def config(tmp_path, root) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model: {{arch: tiny-clip, pretrained: none}}
stream:
  benchmark: folders
  tasks: 2
  data:
    datasets:
      - {{path: {root}/shapes}}
      - {{path: {root}/tones}}
      - {{path: {root}/known, role: heldout}}
training: {{batch_size: 8}}
budget: {{steps_per_task: 2}}
policies: {{presets: [], grid: {{init: [ft], deploy: [ft], merge: [{{technique: average}}]}}}}
"""
    )
    return str(path)


def broken_tree(root):
    folders_tree(root)
    (root / "shapes" / "red" / "empty.png").write_bytes(b"")
    (root / "tones" / "blue" / "x.jpg").write_text("a text file\n")


@pytest.mark.parametrize("command", ["plan", "sweep"])
def test_plan_and_sweep_refuse_unreadable_images_in_one_line(command, tmp_path, capsys, monkeypatch):
    import ray

    broken_tree(tmp_path / "data")
    started: list = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(1))
    out = tmp_path / "out"
    extra = ["--output", str(out)] if command == "sweep" else ["--no-timing"]
    assert main([command, config(tmp_path, tmp_path / "data"), *extra]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("time-ray: error: real data: 2 images cannot be read ("), errors
    err = errors[0]
    assert f"{tmp_path / 'data' / 'shapes' / 'red' / 'empty.png'}: empty file (0 bytes)" in err
    assert f"{tmp_path / 'data' / 'tones' / 'blue' / 'x.jpg'}: not an image PIL can open" in err
    assert err.rstrip().endswith("time-ray data show CONFIG lists them all.")
    assert not started and not out.exists()


def test_plan_warns_about_classes_that_are_never_evaluated(tmp_path, capsys):
    folders_tree(tmp_path / "data")
    png(tmp_path / "data" / "shapes" / "lone\nly" / "0.png")  # a newline in the class name stays escaped
    assert main(["plan", config(tmp_path, tmp_path / "data"), "--no-timing"]) == 0
    err = capsys.readouterr().err.splitlines()
    single = [line for line in err if "time-ray: warning: 1 adaptation classes with a single image" in line]
    assert len(single) == 1 and "shapes: lone\\nly (its image is in " in single[0], err
    assert not any(line.startswith("ly") for line in err)


def test_data_show_lists_every_problem_at_once(tmp_path, capsys):
    broken_tree(tmp_path / "data")
    png(tmp_path / "data" / "shapes" / "new\nline" / "0.png")  # one image, a newline in its class name
    for i in range(12):
        (tmp_path / "data" / "known" / "red" / f"bad{i}.png").write_bytes(b"")
    path = config(tmp_path, tmp_path / "data")
    assert main(["data", "show", path]) == 0
    out = capsys.readouterr().out
    block = out[out.index("problems:") :].splitlines()
    assert block[1] == "  14 unreadable images (a batch that reads one would stop the sweep):"
    assert sum(line.startswith("    ") and ": empty file (0 bytes)" in line for line in block) == 10
    assert "    ... and 4 more (--json lists them all)" in block
    assert any(line.startswith("  1 adaptation classes with a single image") for line in block)
    assert "    shapes: new\\nline (its image is in train: never evaluated)" in block or (
        "    shapes: new\\nline (its image is in test: never trained on)" in block
    )
    assert main(["data", "show", path, "--json"]) == 0
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert len(problems["unreadable"]) == 14 and {"path", "reason"} == set(problems["unreadable"][0])
    assert len(problems["single"]) == 1


def test_data_show_reports_no_problems_and_shows_heldout_sets_without_training_images(tmp_path, capsys):
    folders_tree(tmp_path / "data")
    assert main(["data", "show", config(tmp_path, tmp_path / "data"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == {"unreadable": [], "untested": [], "single": [], "untrained": []}
    known = next(r for r in out["datasets"] if r["name"] == "known")
    assert (known["n_train"], known["n_test"]) == (0, 12)
    assert main(["data", "show", config(tmp_path, tmp_path / "data")]) == 0
    assert "problems: none" in capsys.readouterr().out


def test_the_builtin_benchmark_has_no_image_check(monkeypatch, capsys):
    monkeypatch.setattr(problems_module, "check_images", lambda *a, **k: pytest.fail("checked generated tensors"))
    builtin = (
        "stream.builtin={adaptation_datasets: 2, heldout_datasets: 1, classes_per_dataset: 2, "
        "pretrain_classes: 2, train_per_class: 4, test_per_class: 2}"
    )
    assert main(["data", "show", "configs/quickstart.yaml", "--set", builtin, "--set", "stream.tasks=2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"]["unreadable"] == []
