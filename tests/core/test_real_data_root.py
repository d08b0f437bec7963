"""Data someone sends stays inside its root: every path a reader takes from a file's contents (an info file's
keys, a table's image column) or from a directory listing (class folders, their images, info files) must
resolve, symlinks followed, inside the data root, unless ``allow_outside_root: true``; and the files the
readers open themselves must be regular files (docs/hostile-files.md)."""

import json
import os

import pandas as pd
import pytest

from tests.helpers.real_data import fomo_options, png, write_folders, write_fomo, write_table
from time_ray.config import experiment_settings, load_config
from time_ray.core.errors import ConfigError
from time_ray.core.real_data import validate_real_data

OPT_IN = "refused (set stream.data.allow_outside_root: true to read files outside it)."


def rename_key(info, old_key: str, new_key: str) -> None:
    records = json.loads(info.read_text())
    records[new_key] = records.pop(old_key)
    info.write_text(json.dumps(records))


def first_key(info) -> str:
    return next(iter(json.loads(info.read_text())))


# ------------------------------------------------------------------------------------------- fomo


@pytest.mark.parametrize("key", ["../../secret.png", "../cars/../../secret.png"])
def test_fomo_refuses_an_info_key_that_climbs_out_of_the_root(tmp_path, key):
    root = write_fomo(tmp_path / "data")
    png(tmp_path / "secret.png", (1, 2, 3))
    info = root / "cars_train.json"
    rename_key(info, first_key(info), key)
    with pytest.raises(ConfigError) as caught:
        validate_real_data("fomo", fomo_options(root))
    assert str(caught.value) == (
        f"real data (fomo), option 'root': info file {info}: entry {key!r} leads to '{tmp_path / 'secret.png'}', "
        f"outside the data root {root}; {OPT_IN}"
    )
    catalog = validate_real_data("fomo", fomo_options(root, allow_outside_root=True))
    assert root / "cars" / key in [item.path for item in catalog.items]  # the opt-in reads it, as named


def test_fomo_refuses_an_absolute_info_key(tmp_path):
    root = write_fomo(tmp_path / "data")
    info = root / "pets_test.json"  # a held-out set: its test split is read
    rename_key(info, first_key(info), "/etc/passwd")
    with pytest.raises(ConfigError, match=r"info file .*pets_test.json: entry '/etc/passwd' leads to '/etc/passwd'"):
        validate_real_data("fomo", fomo_options(root))


def test_fomo_refuses_an_image_or_dataset_folder_that_is_a_symlink_out_of_the_root(tmp_path):
    root = write_fomo(tmp_path / "data")
    info = root / "cars_train.json"
    key = first_key(info)
    (root / "cars" / key).unlink()
    png(tmp_path / "elsewhere" / "x.png", (9, 9, 9))
    (root / "cars" / key).symlink_to(tmp_path / "elsewhere" / "x.png")
    with pytest.raises(ConfigError, match=rf"entry '{key}' leads to '{tmp_path / 'elsewhere' / 'x.png'}', outside"):
        validate_real_data("fomo", fomo_options(root))
    (root / "cars" / key).unlink()
    png(root / "cars" / key, (9, 9, 9))
    (root / "cars").rename(tmp_path / "cars-moved")
    (root / "cars").symlink_to(tmp_path / "cars-moved")  # the whole dataset folder elsewhere
    with pytest.raises(ConfigError, match=rf"leads to '{tmp_path / 'cars-moved'}/.*', outside the data root {root};"):
        validate_real_data("fomo", fomo_options(root))
    assert validate_real_data("fomo", fomo_options(root, allow_outside_root=True)).items


def test_fomo_follows_symlinks_that_stay_inside_the_root(tmp_path):
    root = write_fomo(tmp_path / "data")
    (root / "cars").rename(root / "cars-real")
    (root / "cars").symlink_to("cars-real")  # relative, inside the root
    linked_root = tmp_path / "link-to-data"
    linked_root.symlink_to(root)  # the root itself named through a symlink
    assert len(validate_real_data("fomo", fomo_options(linked_root)).items) == len(
        validate_real_data("fomo", fomo_options(root)).items
    )


def test_fomo_refuses_an_info_file_that_is_a_symlink_out_of_the_info_dir(tmp_path):
    root = write_fomo(tmp_path / "data")
    (root / "cars_test.json").rename(tmp_path / "cars_test.json")
    (root / "cars_test.json").symlink_to(tmp_path / "cars_test.json")
    with pytest.raises(ConfigError) as caught:
        validate_real_data("fomo", fomo_options(root))
    assert str(caught.value).startswith(
        f"real data (fomo), option 'info_dir': info directory {root}: entry 'cars_test.json' leads to "
        f"'{tmp_path / 'cars_test.json'}', outside the data root {root};"
    )


def test_a_stream_file_that_is_a_fifo_is_refused_unopened(tmp_path):
    root = write_fomo(tmp_path / "data")
    fifo = tmp_path / "stream.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as caught:
        validate_real_data("fomo", fomo_options(root, stream_file=str(fifo)))
    assert str(caught.value) == (
        f"real data (fomo), option 'stream_file': cannot read the stream file {fifo}: "
        "not a regular file (a named pipe)."
    )


def test_the_option_must_be_true_or_false(tmp_path):
    root = write_fomo(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"option 'allow_outside_root': expected true or false .*got 'yes'\."):
        validate_real_data("fomo", fomo_options(root, allow_outside_root="yes"))


def test_the_option_left_out_changes_no_fingerprint_and_no_cache_key(tmp_path):
    root = write_fomo(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {pretrained: none}\nstream:\n  benchmark: fomo\n  tasks: 2\n  data: " + json.dumps(fomo_options(root))
    )
    cfg = load_config(config)
    assert "allow_outside_root" not in cfg.to_dict()["stream"]["data"]
    assert "allow_outside_root" not in experiment_settings(cfg).data
    opted = load_config(config, ["stream.data.allow_outside_root=true"])
    assert opted.stream.data["allow_outside_root"] is True and opted.fingerprint() != cfg.fingerprint()


# ------------------------------------------------------------------------------------------- folders


def test_folders_refuse_a_class_folder_that_is_a_symlink_out_of_the_dataset(tmp_path):
    write_folders(tmp_path / "flowers", ["rose", "tulip"], 5)
    write_folders(tmp_path / "private", ["secret"], 5)
    (tmp_path / "flowers" / "secret").symlink_to(tmp_path / "private" / "secret")
    opts = {"datasets": [{"name": "flowers", "path": str(tmp_path / "flowers")}]}
    with pytest.raises(ConfigError) as caught:
        validate_real_data("folders", opts)
    assert str(caught.value) == (
        f"real data (folders), option 'datasets[0].path': folder {tmp_path / 'flowers'}: entry 'secret' leads to "
        f"'{tmp_path / 'private' / 'secret'}', outside the data root {tmp_path / 'flowers'}; {OPT_IN}"
    )
    assert len(validate_real_data("folders", {**opts, "allow_outside_root": True}).items) == 15


def test_folders_refuse_an_image_that_is_a_symlink_out_of_the_dataset(tmp_path):
    write_folders(tmp_path / "flowers", ["rose", "tulip"], 5)
    png(tmp_path / "outside.png", (0, 0, 0))
    (tmp_path / "flowers" / "rose" / "9.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "flowers" / "rose" / "8.png").symlink_to("0.png")  # inside: fine
    opts = {"datasets": [{"name": "flowers", "path": str(tmp_path / "flowers")}]}
    with pytest.raises(ConfigError, match=rf"class folder {tmp_path / 'flowers' / 'rose'}: entry '9.png' leads to"):
        validate_real_data("folders", opts)
    (tmp_path / "flowers" / "rose" / "9.png").unlink()
    assert len(validate_real_data("folders", opts).items) == 11


# ------------------------------------------------------------------------------------------- table


@pytest.mark.parametrize("image", ["../outside.png", "/etc/passwd", "images/../../outside.png"])
def test_table_refuses_an_image_path_outside_its_directory(tmp_path, image):
    path = write_table(tmp_path / "t")
    png(tmp_path / "outside.png", (0, 0, 0))
    frame = pd.read_csv(path)
    frame.loc[3, "image"] = image
    frame.to_csv(path, index=False)
    with pytest.raises(ConfigError) as caught:
        validate_real_data("table", {"path": str(path)})
    message = str(caught.value)
    assert message.startswith(f"real data (table), option 'path': table {path} row 3: entry '{image}' leads to ")
    assert message.endswith(f"outside the data root {tmp_path / 't'}; {OPT_IN}")
    assert validate_real_data("table", {"path": str(path), "allow_outside_root": True}).items


def test_a_long_entry_is_quoted_cut(tmp_path):
    path = write_table(tmp_path / "t")
    frame = pd.read_csv(path)
    frame.loc[0, "image"] = "/" + "a" * 100_000
    frame.to_csv(path, index=False)
    with pytest.raises(ConfigError) as caught:
        validate_real_data("table", {"path": str(path)})
    assert "... (100,003 chars)" in str(caught.value) and len(str(caught.value)) < 1000
