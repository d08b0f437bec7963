"""The FoMo-in-Flux layout exactly as the TIME authors ship it (pseudope/fomo_in_flux): dict-keyed info
files in a directory of their own (``data_lib/00_info``), images under ``<root>/<DATASET>/``, stream
files in ``stream_construction/``. A small tree in that layout (tests/helpers/fomo_layout.py) is loaded,
shown and planned here."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.fomo_layout import (
    ADAPTATION,
    HELDOUT,
    RETRIEVAL,
    colour,
    fomo_overrides,
    key_of,
    write_authors_layout,
)
from time_ray.cli import main
from time_ray.core.errors import ConfigError
from time_ray.core.real_data import CLIP_MEAN, CLIP_STD, load_real_benchmark, validate_real_data
from time_ray.core.real_data.fomo import scan


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_authors_layout(tmp_path_factory.mktemp("fomo_in_flux"))


def options(tree, **extra):
    return {
        "root": str(tree["root"]),
        "info_dir": str(tree["info_dir"]),
        "stream_file": str(tree["stream_file"]),
        "heldout": list(HELDOUT),
        "retrieval": RETRIEVAL,
        "templates": {"FSCOCO": "A sketch of a {}"},
        **extra,
    }


def stream_entries(path) -> list[str]:
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------------------- loading


def test_authors_layout_loads_with_classes_templates_captions_and_roles(tree):
    bench, stream = load_real_benchmark("fomo", options(tree), image_size=8)
    adaptation = [n for n, d in bench.datasets.items() if d.role == "adaptation"]
    assert adaptation == ["DTD", "FSCOCO", "MTSD", "iNATURALIST2021"]  # the stream's datasets; RETINOPATHY left out
    assert [n for n, d in bench.datasets.items() if d.role == "heldout"] == sorted(HELDOUT)
    assert {n for n, d in bench.datasets.items() if d.kind == "retrieval"} == set(RETRIEVAL)
    # class ids follow <DATASET>_classnames.json (not sorted), whatever a record's classname spells
    for name, (_, _, classes, _, _) in ADAPTATION.items():
        assert [bench.class_names[c] for c in bench.datasets[name].classes] == classes
    assert bench.datasets["DTD"].classes == tuple(range(8))
    # templates: from primer_caption, the templates option where it is missing, the authors' default
    templates = {n: d.template for n, d in bench.datasets.items()}
    assert templates["DTD"] == "A photo of a {} texture."
    assert templates["MTSD"] == 'A centered photo of a "{}" traffic sign.'
    assert templates["FSCOCO"] == "A sketch of a {}"
    assert templates["MONKEYS10"] == "A photo of a {}, a type of monkey." and templates["FLICKR30K"] == "{}"
    assert bench.caption(bench.datasets["MTSD"].classes[4]) == 'A centered photo of a "speed limit 30" traffic sign.'
    # captions: default_caption when not null, else synthetic_merged_caption, else the class caption
    dtd_train = [c for c, label in zip(bench.train_captions, bench.train_labels.tolist()) if label < 8]
    assert dtd_train[:4] == [
        "merged paisley train 0",
        "A photo of a paisley texture.",  # neither caption: the class's
        "merged banded train 0",
        "a native caption of banded 1",
    ]  # default_caption wins
    assert "a sketch: giraffe train 0" in bench.train_captions  # FSCOCO: default_caption, a string
    assert "merged stop train 1" in bench.train_captions  # MTSD: synthetic_merged_caption, a string
    flickr = [bench.test_captions[i] for i in bench.test_indices(bench.datasets["FLICKR30K"].classes)]
    assert flickr == [f"FLICKR30K scene {i} caption 0" for i in range(3)]  # one class per caption-only image
    # pixels: every DTD image shows its class's colour
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    for image_, label in zip(bench.train_images[:], bench.train_labels.tolist()):
        if label < 8:
            expected = (torch.tensor(colour(label), dtype=torch.float32).view(3, 1, 1) / 255 - mean) / std
            assert torch.allclose(image_.float(), expected.expand(3, 8, 8), atol=2e-2)
    # held-out sets read their test split only, even with a train file (MONKEYS10)
    assert len(bench.train_indices(bench.datasets["MONKEYS10"].classes)) == 0
    # the stream: class ids in stream-file order
    assert [f"{bench.class_dataset[c]}+++{bench.class_names[c]}" for c in stream] == stream_entries(tree["stream_file"])


def test_resized_variant_is_used_where_it_and_its_folder_exist(tree, tmp_path):
    plain = scan(options(tree))
    resized = scan(options(tree, resized=224))
    inat = "iNATURALIST2021"

    def paths(catalog, dataset):
        return [item.path for item in catalog.items if item.dataset == dataset]

    folders = {i.split: i.path.relative_to(tree["root"] / inat).parts[0] for i in resized.items if i.dataset == inat}
    assert folders == {"train": f"{inat}_train_mini_224", "test": f"{inat}_val_224"}
    assert {p.relative_to(tree["root"] / inat).parts[0] for p in paths(plain, inat)} == {"train_mini", "val"}
    assert paths(resized, "DTD") == paths(plain, "DTD")  # no _224 file: the original one
    assert [(i.classname, i.caption) for i in resized.items] == [(i.classname, i.caption) for i in plain.items]
    with pytest.raises(ConfigError, match="'resized': expected the image size"):
        scan(options(tree, resized="224px"))


def test_per_dataset_stream_with_lower_case_handles_and_handles_in_options(tree):
    opts = options(
        tree,
        stream_file=str(tree["dtd_stream"]),
        heldout=["cifar10", "oxford_pets", "monkeys10", "flickr30k"],
        retrieval=["flickr30k"],
        templates={},
    )
    bench, stream = load_real_benchmark("fomo", opts, 8)
    assert list(bench.datasets) == ["DTD", "CIFAR10", "FLICKR30K", "MONKEYS10", "OXFORDPETS"]
    assert bench.datasets["FLICKR30K"].kind == "retrieval"
    assert [f"{bench.class_dataset[c]}+++{bench.class_names[c]}" for c in stream] == [
        e.replace("dtd+++", "DTD+++") for e in stream_entries(tree["dtd_stream"])
    ]


def test_without_stream_file_every_dataset_with_a_train_file_adapts(tree):
    catalog = scan(options(tree, stream_file=None, templates={}))
    assert [d.name for d in catalog.datasets if d.role == "adaptation"] == [
        "DTD",
        "FSCOCO",
        "MTSD",
        "RETINOPATHY",
        "iNATURALIST2021",
    ]
    assert (
        next(d for d in catalog.datasets if d.name == "FSCOCO").template == "A photo of a {}."
    )  # no primer, no option
    assert catalog.stream[:9] == [("DTD", c) for c in ADAPTATION["DTD"][2]] + [("FSCOCO", "giraffe")]


def test_max_per_class_keeps_the_first_images(tree):
    catalog = scan(options(tree, max_per_class=1))
    dtd = [i for i in catalog.items if i.dataset == "DTD"]
    assert len(dtd) == 8 * 2 and all(i.path.stem.endswith("_0000") for i in dtd)


# ------------------------------------------------------------------------------ time-ray data show


CONFIG = """\
# time-ray sweep c.yaml
name: show
model: {{arch: tiny-clip, pretrained: none}}
stream:
  benchmark: fomo
  tasks: {tasks}
  order: dataset
  data: {data}
budget: {{steps_per_task: 1}}
policies: {{presets: [sequential-ft]}}
"""


def write_config(tmp_path, data: dict, tasks: int = 5) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(
        CONFIG.format(tasks=tasks, data=json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in data.items()}))
    )
    return str(path)


def test_data_show_json_lists_datasets_and_the_task_cut_without_decoding(tree, tmp_path, capsys, monkeypatch):
    import time_ray.core.images as images

    monkeypatch.setattr(images, "pixels", lambda *a: pytest.fail("data show decoded an image"))
    config = write_config(tmp_path, options(tree), tasks=5)
    assert main(["data", "show", config, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"datasets", "tasks", "problems"}
    assert out["problems"] == {"unreadable": [], "untested": [], "single": [], "untrained": []}
    rows = {r["name"]: r for r in out["datasets"]}
    assert list(rows)[:4] == ["DTD", "FSCOCO", "MTSD", "iNATURALIST2021"]
    assert all(set(r) == {"name", "role", "classes", "n_train", "n_test", "template", "caption"} for r in rows.values())
    assert rows["DTD"] == {
        "name": "DTD",
        "role": "adaptation",
        "classes": 8,
        "n_train": 16,
        "n_test": 8,
        "template": "A photo of a {} texture.",
        "caption": "merged paisley train 0",
    }
    assert rows["FSCOCO"]["caption"] == "a sketch: giraffe train 0" and rows["FSCOCO"]["template"] == "A sketch of a {}"
    assert rows["MTSD"]["caption"] == "merged stop train 0" and rows["MTSD"]["n_test"] == 6  # MTSD_val.json
    assert rows["CIFAR10"] == {
        "name": "CIFAR10",
        "role": "heldout",
        "classes": 2,
        "n_train": 0,
        "n_test": 2,
        "template": "A photo of a {}.",
        "caption": "merged cifar10 thing 0 test 0",
    }
    assert rows["MSCOCO"] == {
        "name": "MSCOCO",
        "role": "retrieval",
        "classes": 3,
        "n_train": 0,
        "n_test": 3,
        "template": "{}",
        "caption": "MSCOCO scene 0 caption 0",
    }
    assert rows["MONKEYS10"]["n_train"] == 0
    entries = stream_entries(tree["stream_file"])
    assert out["tasks"] == [list(chunk) for chunk in np.array_split(entries, 5)]  # contiguous, nearly equal
    # the per-dataset stream (lower-case handles) shows the folder names
    config = write_config(tmp_path, options(tree, stream_file=tree["dtd_stream"]), tasks=3)
    assert main(["data", "show", config, "--json", "--set", "stream.order=reversed"]) == 0
    tasks = json.loads(capsys.readouterr().out)["tasks"]
    assert [e for task in tasks for e in task] == [f"DTD+++{c}" for c in ADAPTATION["DTD"][2]]  # the file reversed
    assert [len(task) for task in tasks] == [3, 3, 2]


def test_data_show_text_and_a_corrupt_image_is_not_read(tree, tmp_path, capsys):
    config = write_config(tmp_path, options(tree, root=tmp_path / "data"), tasks=20)
    import shutil

    shutil.copytree(tree["root"], tmp_path / "data")
    broken = tmp_path / "data" / "DTD" / key_of("DTD", "train", "grid", 0)
    broken.write_bytes(b"not an image")
    assert main(["data", "show", config]) == 0
    out = capsys.readouterr().out
    assert "show: 26 datasets" in out and "stream: 20 tasks of 1-2 (dataset, class) pairs" in out
    assert re.search(r"DTD\s+adaptation\s+8\s+16\s+8\s+A photo of a \{\} texture\. \| merged paisley train 0", out)
    assert re.search(r"FLICKR30K\s+retrieval\s+3\s+0\s+3\s+\{\} \| FLICKR30K scene 0 caption 0", out)
    bench, _ = load_real_benchmark("fomo", options(tree, root=str(tmp_path / "data")), 8)
    with pytest.raises(ConfigError, match=f"cannot read image {broken}"):  # named when a batch reads it
        bench.train_images[[bench.train_images.paths.index(broken)]]


def test_data_show_builtin_benchmark(capsys):
    small = (
        "stream.builtin={adaptation_datasets: 2, heldout_datasets: 2, retrieval_datasets: 1, "
        "classes_per_dataset: 2, pretrain_classes: 2, train_per_class: 2, test_per_class: 1, image_size: 8}"
    )
    assert main(["data", "show", "configs/quickstart.yaml", "--json", "--set", small, "--set", "stream.tasks=2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["role"], r["classes"], r["n_train"], r["n_test"]) for r in out["datasets"]] == [
        ("adapt-00", "adaptation", 2, 4, 2),
        ("adapt-01", "adaptation", 2, 4, 2),
        ("heldout-00", "heldout", 2, 4, 2),
        ("heldout-01", "retrieval", 2, 4, 2),
        ("pretrain", "pretrain", 2, 4, 2),
    ]
    assert len(out["tasks"]) == 2 and sum(len(t) for t in out["tasks"]) == 4
    assert all(e.startswith("adapt-0") and "+++" in e for task in out["tasks"] for e in task)


# ------------------------------------------------------------------------------------------ errors


def broken_tree(tmp_path):
    return write_authors_layout(tmp_path / "fomo_in_flux")


def one_line_error(opts, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        validate_real_data("fomo", opts)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_info_files_are_named(tmp_path):
    paths = broken_tree(tmp_path)
    (paths["info_dir"] / "DTD_test.json").unlink()
    one_line_error(
        options(paths),
        rf"dataset 'DTD' \(adaptation\) needs a test info file: no DTD_test.json or "
        rf"DTD_val.json in {re.escape(str(paths['info_dir']))}",
    )
    (paths["info_dir"] / "DTD_train.json").unlink()
    one_line_error(
        options(paths),
        r"stream_file.*'DTD\+\+\+.*' in .*random_sequence_1.json names unknown "
        r"dataset 'DTD'",
    )
    (paths["info_dir"] / "MTSD_classnames.json").unlink()
    one_line_error(
        options(paths, stream_file=None),
        r"dataset 'MTSD' has class labels but no .*MTSD_classnames.json "
        r"\(expected a JSON list of class names in target order\)",
    )
    one_line_error(options(paths, info_dir=str(paths["root"])), r"'info_dir': no info files .* in .*data \(the authors")


def test_info_file_that_is_a_list_is_named(tmp_path):
    paths = broken_tree(tmp_path)
    info = paths["info_dir"] / "MTSD_val.json"
    info.write_text(json.dumps([{"image": k, **v} for k, v in json.loads(info.read_text()).items()]))
    one_line_error(
        options(paths),
        rf"info file {re.escape(str(info))}: expected a JSON object mapping each image "
        r"path .* got a JSON list",
    )
    info.write_text("{not json")
    one_line_error(options(paths), rf"cannot read info file {re.escape(str(info))} as JSON")
    info.write_text(json.dumps({"a.jpg": {"classname": "stop", "target": 9}}))
    one_line_error(
        options(paths),
        r"the record of 'a.jpg' has target 9; expected an index into the 6 names of "
        r".*MTSD_classnames.json",
    )
    info.write_text(json.dumps({"a.jpg": {"class_name": "stop", "target": 0}}))
    one_line_error(options(paths), r"the record of 'a.jpg' lacks classname \(keys found: class_name, target")


def test_stream_entries_naming_unknown_classes_or_datasets_are_named(tmp_path):
    paths = broken_tree(tmp_path)
    stream = paths["stream_file"]
    for entries, pattern in (
        (
            ["DTD+++paisly"],
            r"entry 'DTD\+\+\+paisly' in .*random_sequence_1.json: dataset 'DTD' has no class "
            r"'paisly' \(did you mean 'paisley'\?\) \(its classes: .*DTD_classnames.json\)",
        ),
        (
            ["dtd+++paisley", "DTDD+++grid"],
            r"entry 'DTDD\+\+\+grid' in .* names unknown dataset 'DTDD'.*did you "
            r"mean 'DTD'",
        ),
        (["CIFAR10+++cifar10 thing 0"], r"names dataset 'CIFAR10', which is listed as heldout"),
        (["DTD+++grid", "dtd+++grid"], r"entry 'dtd\+\+\+grid' in .* appears more than once"),
        ("DTD+++grid", r"must hold a non-empty JSON list"),
    ):
        stream.write_text(json.dumps(entries))
        one_line_error(options(paths), pattern)
    stream.write_text(json.dumps(["DTD+++grid"]))
    one_line_error(
        options(paths, heldout=["CIFAR100"]),
        r"'heldout': dataset 'CIFAR100' does not exist \(did you mean "
        r"'CIFAR10'\?\)",
    )


def test_cli_error_is_one_line_naming_the_file(tmp_path, capsys):
    paths = broken_tree(tmp_path)
    paths["stream_file"].write_text(json.dumps(["DTD+++paisly"]))
    config = write_config(tmp_path, options(paths))
    assert main(["data", "show", config]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "random_sequence_1.json" in err and "'paisly'" in err


def test_shipped_config_shows_and_plans_on_the_authors_layout(tree, capsys):
    """configs/fomo-in-flux.yaml with only its three placeholders set: `data show` lists the paper's 22
    held-out sets and cuts the stream into T = 20 tasks; `plan` runs (a small model and batch here, to
    keep the test fast: ViT-B-16 at batch 512 needs far more memory than a CPU test machine has)."""
    overrides = [a for o in fomo_overrides(tree) for a in ("--set", o)]
    assert main(["data", "show", "configs/fomo-in-flux.yaml", "--json", *overrides]) == 0
    out = json.loads(capsys.readouterr().out)
    roles = {r["name"]: r["role"] for r in out["datasets"]}
    assert sorted(n for n, r in roles.items() if r == "heldout") == sorted(set(HELDOUT) - set(RETRIEVAL))
    assert sorted(n for n, r in roles.items() if r == "retrieval") == RETRIEVAL
    assert len(out["tasks"]) == 20 and [e for t in out["tasks"] for e in t] == stream_entries(tree["stream_file"])
    # plan checks theta_0 as the sweep does: the config's ViT-B-16 tag is no tiny-clip tag, so none here
    small = ["--set", "model.arch=tiny-clip", "--set", "training.batch_size=8", "--set", "model.pretrained=none"]
    assert main(["plan", "configs/fomo-in-flux.yaml", *overrides, *small, "--device-tflops", "400"]) == 0
    out = capsys.readouterr().out
    assert "5 trials x 20 tasks" in out and "device-hours at 400 TFLOP/s" in out and out.count("steps/task=1420") == 5
    assert "base model: none" in out and "task 20:" in out and "zero-shot accuracy starts at chance" in out
    line = next(x for x in out.splitlines() if x.startswith("data path:"))
    assert "image files read per batch, no store built" in line and "pretraining pool: 2 tar shard(s)" in line
    assert "RandomResizedCrop on" in line and "MiB of pixels per process" in line


def test_outline_shows_pretrain_only_datasets_without_decoding(tree):
    from time_ray.core.real_data import outline_real_data

    rows, bench, stream = outline_real_data("fomo", options(tree, pretrain=["retinopathy"]))
    row = next(r for r in rows if r["name"] == "RETINOPATHY")
    assert row == {
        "name": "RETINOPATHY",
        "role": "pretrain",
        "classes": 2,
        "n_train": 2,
        "n_test": 0,
        "template": "A close-up light microscopy picture of {}.",
        "caption": "merged No DR",
    }
    assert bench.train_images.shape == (len(bench.train_labels), 3, 0, 0)  # paths, no size: nothing decoded
    assert bench.class_dataset[-2:] == ["pretrain", "pretrain"] and len(stream) == 22


def test_stream_class_without_training_images_is_named(tmp_path):
    paths = broken_tree(tmp_path)
    info = paths["info_dir"] / "DTD_train.json"
    records = {k: v for k, v in json.loads(info.read_text()).items() if v["classname"] != "grid"}
    info.write_text(json.dumps(records))
    one_line_error(
        options(paths),
        rf"entry 'DTD\+\+\+grid' in .*: class 'grid' has no training images in "
        rf"{re.escape(str(info))}\.",
    )
