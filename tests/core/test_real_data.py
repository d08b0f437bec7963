"""Readers of real data (time_ray.core.real_data): tiny PNGs written in each layout, loaded at 16 px."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.helpers.real_data import COLOURS, MEAN, STD, fomo_options, png, write_folders, write_fomo, write_table
from time_ray.core.errors import ConfigError
from time_ray.core.images import ImageFiles
from time_ray.core.real_data import load_real_benchmark, validate_real_data


def normalized(colour):
    return (torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255 - MEAN) / STD


def class_of(image, names):
    """The class whose colour the (solid) image shows."""
    dist = {n: float((image.float() - normalized(COLOURS[n])).abs().max()) for n in names}
    return min(dist, key=dist.get)


# --------------------------------------------------------------------------------------------- fomo


def test_fomo_loads_images_labels_roles_templates_and_captions(tmp_path):
    root = write_fomo(tmp_path / "fomo")
    bench, stream = load_real_benchmark("fomo", fomo_options(root), image_size=16)
    # class ids follow <DATASET>_classnames.json; without a stream file every adaptation class, in id order
    assert bench.class_names == ["sparrow", "robin", "owl", "red car", "blue car", "cat", "dog", "tree", "house"]
    assert stream == [0, 1, 2, 3, 4]
    assert bench.class_dataset == ["birds"] * 3 + ["cars"] * 2 + ["pets"] * 2 + ["pretrain"] * 2
    assert list(bench.datasets) == ["birds", "cars", "pets"]
    roles = {n: d.role for n, d in bench.datasets.items()}
    assert roles == {"birds": "adaptation", "cars": "adaptation", "pets": "heldout"}
    assert bench.datasets["cars"].classes == (3, 4) and bench.datasets["pets"].classes == (5, 6)
    assert bench.datasets["cars"].template == "a photo of a {}, a type of car."  # from primer_caption
    assert bench.datasets["pets"].template == "a photo of my {}."
    assert all(d.kind == "classification" for d in bench.datasets.values())
    assert bench.generic_classes == [7, 8] and set(bench.pretrain_classes) == {5, 6, 7, 8}
    # held-out sets read their test split, pretrain-only ones their train split
    assert bench.train_images.shape == (7 * 3, 3, 16, 16) and bench.test_images.shape == (7, 3, 16, 16)
    assert isinstance(bench.train_images, ImageFiles) and isinstance(bench.test_images, ImageFiles)  # paths only
    assert bench.train_labels.dtype == torch.int64
    assert bench.train_labels.tolist() == [c for c in (0, 1, 2, 3, 4, 7, 8) for _ in range(3)]
    assert len(bench.train_captions) == 21 and len(bench.test_captions) == 7
    for images, labels, captions in (
        (bench.train_images, bench.train_labels, bench.train_captions),
        (bench.test_images, bench.test_labels, bench.test_captions),
    ):
        for image, label, caption in zip(images[:], labels.tolist(), captions):
            name = bench.class_names[label]
            assert class_of(image, COLOURS) == name  # pixels belong to the labelled class
            assert caption.startswith(f"{name} number ")  # default_caption wins over the synthetic one
    assert bench.test_captions[4] == "blue car number 0 in test"
    assert bench.caption(4) == "a photo of a blue car, a type of car."


def test_fomo_max_per_class_retrieval_and_templates(tmp_path):
    root = write_fomo(tmp_path / "fomo", n_train=4, n_test=2)
    bench, _ = load_real_benchmark(
        "fomo", fomo_options(root, max_per_class=2, retrieval=["pets"], templates={"cars": "a car: {}."}), image_size=16
    )
    assert bench.train_images.shape[0] == 7 * 2 and bench.test_images.shape[0] == 7 * 2
    assert bench.train_captions[:2] == ["sparrow number 0 in train", "sparrow number 1 in train"]
    assert bench.datasets["pets"].kind == "retrieval" and bench.datasets["cars"].kind == "classification"
    assert bench.datasets["cars"].template == "a car: {}."


def test_fomo_stream_file_gives_class_ids_in_file_order_and_selects_adaptation_datasets(tmp_path):
    root = write_fomo(tmp_path / "fomo")
    entries = ["birds+++robin", "cars+++red car", "birds+++owl", "birds+++sparrow", "cars+++blue car"]
    (tmp_path / "stream.json").write_text(json.dumps(entries))
    bench, stream = load_real_benchmark("fomo", fomo_options(root, stream_file=str(tmp_path / "stream.json")), 16)
    assert isinstance(stream, list) and all(type(c) is int for c in stream)
    assert [f"{bench.class_dataset[c]}+++{bench.class_names[c]}" for c in stream] == entries
    # only datasets named in the stream are adaptation datasets: drop "cars" from the stream
    (tmp_path / "stream.json").write_text(json.dumps(["BIRDS+++owl", "birds+++robin"]))  # handles ignore case
    bench, stream = load_real_benchmark("fomo", fomo_options(root, stream_file=str(tmp_path / "stream.json")), 16)
    assert list(bench.datasets) == ["birds", "pets"] and [bench.class_names[c] for c in stream] == ["owl", "robin"]


def test_fomo_errors_name_the_option_file_and_close_matches(tmp_path):
    root = write_fomo(tmp_path / "fomo")
    with pytest.raises(ConfigError, match="'root'.*does not exist"):
        validate_real_data("fomo", {"root": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="'root': is required"):
        validate_real_data("fomo", {})
    found = "datasets found: birds, cars, pets, web"
    with pytest.raises(ConfigError, match=rf"'heldout'.*'petz' does not exist.*did you mean 'pets'.*{found}"):
        validate_real_data("fomo", {"root": str(root), "heldout": ["petz"]})
    stream = tmp_path / "s.json"
    for entry, pattern in (
        (
            "bird+++owl",
            r"'bird\+\+\+owl' in .*s.json names unknown dataset 'bird'.*did you mean "
            r"'birds'",
        ),
        ("birds+++robn", r"'birds\+\+\+robn' in .*s.json: .*no class 'robn'.*did you mean 'robin'"),
        ("pets+++cat", r"'pets\+\+\+cat' in .*s.json names dataset 'pets'.*heldout"),
        ("birds-owl", 'not a "DATASET\\+\\+\\+classname" string'),
    ):
        stream.write_text(json.dumps(["birds+++owl", entry] if "owl" not in entry else [entry]))
        with pytest.raises(ConfigError, match=pattern):
            validate_real_data("fomo", fomo_options(root, stream_file=str(stream)))
    with pytest.raises(ConfigError, match="'stream_file'.*missing.json does not exist"):
        validate_real_data("fomo", fomo_options(root, stream_file=str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match="unknown option.*did you mean 'heldout'"):
        validate_real_data("fomo", {"root": str(root), "held_out": ["pets"]})
    with pytest.raises(ConfigError, match="unknown kind 'imagenet'"):
        validate_real_data("imagenet", {})
    (root / "cars_test.json").write_text("{}")
    with pytest.raises(ConfigError, match="cars_test.json holds no records"):
        validate_real_data("fomo", fomo_options(root))
    (root / "cars_test.json").unlink()
    with pytest.raises(
        ConfigError, match="'cars' \\(adaptation\\) needs a test info file: no cars_test.json or cars_val.json"
    ):
        validate_real_data("fomo", fomo_options(root))


def test_unreadable_image_is_named_when_read_and_loading_decodes_nothing(tmp_path):
    root = write_fomo(tmp_path / "fomo")
    broken = root / "birds" / "img_birds" / "train" / "owl_1.png"
    broken.write_bytes(b"not a png")
    validate_real_data("fomo", fomo_options(root))  # cheap: no image is opened
    bench, _ = load_real_benchmark("fomo", fomo_options(root), 16)  # the catalog only
    at = bench.train_images.paths.index(broken)
    bench.train_images[[at - 1]]  # its neighbour reads
    with pytest.raises(ConfigError, match=f"cannot read image {broken}"):
        bench.train_images[[at - 1, at]]


# ------------------------------------------------------------------------------------------ images


def test_white_image_is_normalized_with_clip_stats_or_overrides(tmp_path):
    png(tmp_path / "d" / "white" / "0.png", (255, 255, 255))
    png(tmp_path / "d" / "white" / "1.png", (255, 255, 255))
    opts = {"datasets": [{"name": "d", "path": str(tmp_path / "d"), "test_fraction": 0.5}]}
    bench, _ = load_real_benchmark("folders", opts, 16)
    expected = ((1 - MEAN) / STD).expand(3, 16, 16)
    assert torch.allclose(bench.train_images[0].float(), expected, atol=2e-3)
    assert torch.allclose(bench.test_images[0].float(), expected, atol=2e-3)
    bench, _ = load_real_benchmark("folders", {**opts, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}, 16)
    assert torch.allclose(bench.train_images[0].float()[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    with pytest.raises(ConfigError, match="'std'.*3 numbers"):
        validate_real_data("folders", {**opts, "std": [1.0, 1.0]})


def test_resize_shorter_side_then_center_crop(tmp_path):
    image = Image.new("RGB", (8, 24), (255, 0, 0))  # tall: red, green middle third, red
    image.paste((0, 255, 0), (0, 8, 8, 16))
    for n in range(2):
        (tmp_path / "d" / "stripe").mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "d" / "stripe" / f"{n}.png")
    bench, _ = load_real_benchmark("folders", {"datasets": [{"path": str(tmp_path / "d"), "test_fraction": 0.5}]}, 16)
    centre = bench.train_images[0].float()[:, 4:12, 4:12]
    assert torch.allclose(centre, normalized((0, 255, 0)).expand(3, 8, 8), atol=2e-2)


# ----------------------------------------------------------------------------------------- folders


def test_folders_roles_templates_captions_and_explicit_splits(tmp_path):
    write_folders(tmp_path / "flowers", ["sun_flower", "rose", "tulip"], 5)
    write_folders(tmp_path / "pets" / "train", ["cat", "dog"], 3)
    write_folders(tmp_path / "pets" / "test", ["cat", "dog"], 2)
    write_folders(tmp_path / "web", ["tree", "house"], 2)
    opts = {
        "datasets": [
            {"name": "flowers", "path": str(tmp_path / "flowers"), "template": "a flower called {}."},
            {"name": "pets", "path": str(tmp_path / "pets"), "role": "heldout", "kind": "retrieval"},
            {"path": str(tmp_path / "web"), "role": "pretrain"},
        ]
    }
    validate_real_data("folders", opts)
    bench, stream = load_real_benchmark("folders", opts, 16)
    assert stream is None
    assert bench.class_names == ["rose", "sun flower", "tulip", "cat", "dog", "house", "tree"]
    assert bench.class_dataset == ["flowers"] * 3 + ["pets"] * 2 + ["pretrain"] * 2
    flowers, pets = bench.datasets["flowers"], bench.datasets["pets"]
    assert (flowers.role, flowers.template, flowers.kind) == ("adaptation", "a flower called {}.", "classification")
    assert (pets.role, pets.template, pets.kind) == ("heldout", "a photo of a {}.", "retrieval")
    assert "web" not in bench.datasets and bench.generic_classes == [5, 6]
    train, test = np.bincount(bench.train_labels.numpy()), np.bincount(bench.test_labels.numpy(), minlength=7)
    # the held-out pets are only evaluated: their train/ folder is not read
    assert train.tolist()[:5] == [4, 4, 4, 0, 0] and test.tolist()[:5] == [1, 1, 1, 2, 2]
    assert train[5:].sum() + test[5:].sum() == 4 and test[5:].sum() == 1  # round(0.2 * 4) test images
    assert bench.test_captions[:3] == ["a flower called rose.", "a flower called sun flower.", "a flower called tulip."]
    assert bench.train_captions[-1] == "a photo of a tree."
    assert isinstance(bench.train_images, ImageFiles) and bench.train_images.shape == (15, 3, 16, 16)


def test_folders_split_is_class_stratified_and_seeded(tmp_path):
    write_folders(tmp_path / "d", ["a", "b", "c"], 10)

    def test_blue(seed):
        opts = {"seed": seed, "datasets": [{"path": str(tmp_path / "d"), "test_fraction": 0.3}]}
        bench, _ = load_real_benchmark("folders", opts, 8)
        assert np.bincount(bench.test_labels.numpy()).tolist() == [3, 3, 3]
        assert np.bincount(bench.train_labels.numpy()).tolist() == [7, 7, 7]
        blue = bench.test_images[:][:, 2, 0, 0] * STD[2, 0, 0] + MEAN[2, 0, 0]  # which images were picked
        return sorted(zip(bench.test_labels.tolist(), torch.round(blue * 255).tolist()))

    assert test_blue(0) == test_blue(0)
    assert any(test_blue(s) != test_blue(0) for s in (1, 2, 3))


def test_folders_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no class folders"):
        validate_real_data("folders", {"datasets": [{"path": str(tmp_path / "empty")}]})
    with pytest.raises(ConfigError, match=r"datasets\[0\].path.*does not exist"):
        validate_real_data("folders", {"datasets": [{"path": str(tmp_path / "missing")}]})
    with pytest.raises(ConfigError, match=r"datasets\[0\].role.*'eval'"):
        validate_real_data("folders", {"datasets": [{"path": str(tmp_path / "empty"), "role": "eval"}]})
    with pytest.raises(ConfigError, match="'datasets': expected a non-empty list"):
        validate_real_data("folders", {})


# ------------------------------------------------------------------------------------------- table


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_classes_captions_roles_and_caption_only_retrieval(tmp_path, fmt):
    path = write_table(tmp_path, fmt)
    bench, stream = load_real_benchmark(
        "table", {"path": str(path), "heldout": ["pets", "coco"], "templates": {"cars": "a car: {}."}}, 16
    )
    assert stream is None
    assert bench.class_names[:4] == ["blue car", "red car", "cat", "dog"]
    # one class per distinct caption of the held-out coco's test rows (its train rows are left out)
    assert bench.class_names[4:] == [f"scene {i}" for i in range(3)]
    assert {n: (d.role, d.kind, d.template) for n, d in bench.datasets.items()} == {
        "cars": ("adaptation", "classification", "a car: {}."),
        "pets": ("heldout", "classification", "a photo of a {}."),
        "coco": ("heldout", "retrieval", "{}"),
    }
    # held-out pets and coco: their 'train' rows are left out
    assert bench.train_images.shape == (2 * 4, 3, 16, 16) and bench.test_images.shape == (4 + 3, 3, 16, 16)
    assert bench.test_captions == [
        "blue car photo 0",
        "red car photo 0",
        "cat photo 0",
        "dog photo 0",
        "scene 0",
        "scene 1",
        "scene 2",
    ]
    assert bench.caption(4) == "scene 0"
    for image, label in zip(bench.test_images[:4], bench.test_labels[:4].tolist()):
        assert class_of(image, COLOURS) == bench.class_names[label]


def test_table_without_split_column_splits_stratified_and_role_column(tmp_path):
    path = write_table(tmp_path, split=False)
    frame = pd.read_csv(path)
    frame["role"] = frame["dataset"].map({"cars": "adaptation", "pets": "pretrain", "coco": "heldout"})
    frame.to_csv(path, index=False)
    bench, _ = load_real_benchmark("table", {"path": str(path), "test_fraction": 0.2}, 8)
    assert list(bench.datasets) == ["cars", "coco"] and bench.datasets["coco"].role == "heldout"
    assert bench.class_dataset[2:4] == ["pretrain", "pretrain"]
    counts = np.bincount(bench.test_labels.numpy(), minlength=9).tolist()
    assert counts[:4] == [1, 1, 1, 1] and sum(counts[4:]) == 5  # held out: every caption-only row is a test image


def test_table_errors(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"img": ["a.png"], "text": ["x"]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match="lacks the required column.*image, caption.*columns found: img, text"):
        validate_real_data("table", {"path": str(path)})
    with pytest.raises(ConfigError, match="'path'.*does not exist"):
        validate_real_data("table", {"path": str(tmp_path / "none.csv")})
    path = write_table(tmp_path)
    with pytest.raises(ConfigError, match="'pretrain'.*'birds' does not exist.*datasets found: cars, coco, pets"):
        validate_real_data("table", {"path": str(path), "pretrain": ["birds"]})
    frame = pd.read_csv(path)
    frame.loc[0, "split"] = "val"
    frame.to_csv(path, index=False)
    with pytest.raises(ConfigError, match="row 0: split 'val'"):
        validate_real_data("table", {"path": str(path)})


def test_a_uri_as_a_data_path_says_data_is_read_from_local_paths(tmp_path):
    from time_ray.core.errors import ConfigError
    from time_ray.core.real_data import validate_real_data

    with pytest.raises(ConfigError, match=r"s3://bucket/data is a URI; data is read from local paths only"):
        validate_real_data("fomo", {"root": "s3://bucket/data"})
