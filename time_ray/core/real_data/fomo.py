"""The FoMo-in-Flux layout (TIME.md §6): per-dataset info files plus an optional stream file.

``root`` holds, per dataset, either a sub-directory ``<DATASET>/`` with the info files
``train.{json,csv,parquet}`` and ``test.{json,csv,parquet}``, or flat files
``<DATASET>_train.{json,csv,parquet}`` / ``<DATASET>_test...``. Image paths in an info file are
relative to the directory that holds it (absolute paths are used as they are).

An info file lists one record per image: a JSON list of objects, a JSON object mapping the image
path to its record, or a CSV/parquet table with one row per image. Keys (first alias present wins):

* image path: ``image``, ``image_path``, ``path``, ``file``, ``filename``, ``filepath``;
* ``classname`` (or ``class_name``), required;
* class template caption: ``template_caption``, ``default_caption``, ``class_caption`` (optional);
* native or generated caption: ``caption``, ``native_caption``, ``generated_caption``, ``captions``
  (a list: its first entry), optional.

A dataset's prompt template is ``templates[<DATASET>]`` if given, else its first template caption
with the class name replaced by ``{}``, else ``"a photo of a {}."``. The stream file is a JSON list
of ``"DATASET+++classname"`` strings; it names the adaptation datasets (other datasets not listed in
``heldout``/``pretrain`` are then left out), and its order is returned as class ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from time_ray.core.real_data.common import (
    DEFAULT_TEMPLATE, SPLITS, DatasetInfo, Item, Plan, cap_items, check_options, check_plan,
    check_names_exist, close_matches, common_settings, existing_path, fail, is_missing, resolve_roles, templates_option,
)

KIND = "fomo"
OPTIONS = ("root", "stream_file", "heldout", "pretrain", "retrieval", "captions", "templates")
INFO_SUFFIXES = (".json", ".csv", ".parquet")
KEYS = {
    "image": ("image", "image_path", "path", "file", "filename", "filepath"),
    "classname": ("classname", "class_name"),
    "template": ("template_caption", "default_caption", "class_caption"),
    "caption": ("caption", "native_caption", "generated_caption", "captions"),
}
SEPARATOR = "+++"


def find_info_files(root: Path) -> dict[str, dict[str, Path]]:
    """{dataset: {split: info file}} from both the sub-directory and the flat layout."""
    found: dict[str, dict[str, Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for split in SPLITS:
                files = [entry / f"{split}{s}" for s in INFO_SUFFIXES if (entry / f"{split}{s}").is_file()]
                if files:
                    found.setdefault(entry.name, {})[split] = files[0]
        elif entry.suffix in INFO_SUFFIXES:
            stem = entry.name[: -len(entry.suffix)]
            for split in SPLITS:
                if stem.endswith(f"_{split}") and len(stem) > len(split) + 1:
                    found.setdefault(stem[: -len(split) - 1], {})[split] = entry
    if not found:
        fail(KIND, "root", f"no dataset info files in {root}; expected <DATASET>/train.json and "
                           f"<DATASET>/test.json (or .csv/.parquet, or flat <DATASET>_train.json).")
    for name, files in found.items():
        for split in SPLITS:
            if split not in files:
                fail(KIND, "root", f"dataset {name!r} has a {'/'.join(f.name for f in files.values())} info "
                                   f"file but no {split} info file ({split}.json, .csv or .parquet).")
    return found


def read_records(path: Path) -> list[dict]:
    """The records of one info file (JSON list or mapping, CSV, parquet)."""
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data = [{"image": key, **value} if isinstance(value, dict) else value for key, value in data.items()]
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise ValueError("expected a JSON list of objects or an object of objects")
            return data
        import pandas as pd

        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        return frame.to_dict("records")
    except Exception as exc:
        fail(KIND, "root", f"cannot read info file {path}: {exc}")


def field(record: dict, key: str):
    """The first non-missing alias of ``key`` in ``record`` (a caption list gives its first entry)."""
    for alias in KEYS[key]:
        value = record.get(alias)
        if isinstance(value, (list, tuple)):
            value = next((v for v in value if not is_missing(v)), None)
        if not is_missing(value):
            return str(value)
    return None


def derive_template(records: list[dict]) -> str:
    for record in records:
        caption, name = field(record, "template"), field(record, "classname")
        if caption and name and name in caption:
            return caption.replace("{", "{{").replace("}", "}}").replace(name, "{}", 1)
    return DEFAULT_TEMPLATE


def dataset_items(name: str, files: dict[str, Path], template: str | None, mode: str) -> tuple[list[Item], str]:
    records = {split: read_records(files[split]) for split in SPLITS}
    template = template or derive_template(records["train"] + records["test"])
    items = []
    for split in SPLITS:
        for n, record in enumerate(records[split]):
            image, classname = field(record, "image"), field(record, "classname")
            if image is None or classname is None:
                missing = "an image path" if image is None else "classname"
                fail(KIND, "root", f"{files[split]} record {n} lacks {missing} "
                                   f"(keys found: {', '.join(map(str, record))}).")
            class_caption = field(record, "template") or template.format(classname)
            caption = (field(record, "caption") if mode == "native" else None) or class_caption
            items.append(Item(name, classname, split, files[split].parent / image, caption))
    return items, template


def read_stream(options: dict, root: Path) -> list[tuple[str, str, str]]:
    """(dataset, classname, entry) per stream-file entry, in file order."""
    path = Path(str(options["stream_file"])).expanduser()
    if not path.exists() and not path.is_absolute() and (root / path).exists():
        path = root / path
    if not path.is_file():
        fail(KIND, "stream_file", f"{path} does not exist.")
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(KIND, "stream_file", f"cannot read {path} as JSON: {exc}")
    if not isinstance(entries, list) or not entries:
        fail(KIND, "stream_file", f"{path} must hold a non-empty JSON list of \"DATASET+++classname\" strings.")
    pairs = []
    for entry in entries:
        if not isinstance(entry, str) or SEPARATOR not in entry:
            fail(KIND, "stream_file", f"entry {entry!r} in {path} is not a \"DATASET+++classname\" string.")
        dataset, classname = entry.split(SEPARATOR, 1)
        pairs.append((dataset, classname, entry))
    return pairs


def check_stream_datasets(stream, roles: dict[str, str], found) -> None:
    for dataset, _, entry in stream:
        if dataset not in found:
            fail(KIND, "stream_file", f"entry {entry!r} names unknown dataset {dataset!r}"
                                      f"{close_matches(dataset, found)}; datasets found: {', '.join(sorted(found))}.")
        if roles.get(dataset, "adaptation") != "adaptation":
            fail(KIND, "stream_file", f"entry {entry!r} names dataset {dataset!r}, which is listed as "
                                      f"{roles[dataset]}; the stream holds adaptation datasets only.")


def check_stream_classes(stream, items: list[Item]) -> list[tuple[str, str]]:
    classes: dict[str, set[str]] = {}
    for item in items:
        classes.setdefault(item.dataset, set()).add(item.classname)
    seen = set()
    for dataset, classname, entry in stream:
        if classname not in classes[dataset]:
            fail(KIND, "stream_file", f"entry {entry!r}: dataset {dataset!r} has no class {classname!r}"
                                      f"{close_matches(classname, classes[dataset])}.")
        if (dataset, classname) in seen:
            fail(KIND, "stream_file", f"entry {entry!r} appears more than once.")
        seen.add((dataset, classname))
    return [(d, c) for d, c, _ in stream]


def scan(options: dict) -> Plan:
    options = check_options(KIND, options, OPTIONS)
    root = existing_path(KIND, options, "root", directory=True)
    found = find_info_files(root)
    roles, retrieval = resolve_roles(KIND, options, found)
    templates = templates_option(KIND, options)
    check_names_exist(KIND, "templates", templates, found)
    mode = options.get("captions", "native")
    if mode not in ("native", "template"):
        fail(KIND, "captions", f"expected 'native' or 'template', got {mode!r}.")
    stream = read_stream(options, root) if options.get("stream_file") else None
    if stream:
        check_stream_datasets(stream, roles, found)
    adaptation = {d for d, _, _ in stream} if stream else set(found) - set(roles)
    order = {"adaptation": 0, "heldout": 1, "pretrain": 2}
    names = sorted(adaptation | set(roles), key=lambda n: (order[roles.get(n, "adaptation")], n))
    datasets, items = [], []
    for name in names:
        ds_items, template = dataset_items(name, found[name], templates.get(name), mode)
        kind = "retrieval" if name in retrieval else "classification"
        datasets.append(DatasetInfo(name, roles.get(name, "adaptation"), template, kind))
        items += ds_items
    pairs = check_stream_classes(stream, items) if stream else None
    plan = Plan(datasets, cap_items(items, common_settings(KIND, options)[2]), pairs)
    check_plan(KIND, plan)
    return plan
