"""The class-folder layout: one directory per dataset holding one sub-folder per class.

``datasets`` is a list of ``{name, path, role, template, kind, test_fraction}``: ``path`` holds
either ``train/`` and ``test/`` (each with class folders) or the class folders directly, which are
then split class-stratified with ``test_fraction`` (default 0.2) and the top-level ``seed``
(default 0). A class folder's name is the class name, underscores read as spaces. ``role`` is
'adaptation' (default), 'heldout' or 'pretrain'; ``template`` defaults to "a photo of a {}.";
``kind`` is 'classification' (default) or 'retrieval'. Each image's caption is its class caption.
A held-out dataset is only evaluated: without ``train/`` and ``test/`` all its images are test images;
with them its ``train/`` is not read.
"""

from __future__ import annotations

from pathlib import Path

from time_ray.core.errors import shown
from time_ray.core.real_data.common import (
    DEFAULT_TEMPLATE,
    IMAGE_EXTENSIONS,
    KINDS,
    ROLES,
    SPLITS,
    Catalog,
    DataRoot,
    DatasetInfo,
    Item,
    cap_items,
    check_catalog,
    check_fraction,
    check_options,
    check_template,
    close_matches,
    common_settings,
    fail,
    image_files,
    listed,
    split_mask,
)

KIND = "folders"
OPTIONS = ("datasets", "seed")
ENTRY_KEYS = ("name", "path", "role", "template", "kind", "test_fraction")


def check_entry(n: int, entry) -> DatasetInfo:
    where = f"datasets[{n}]"
    if not isinstance(entry, dict):
        fail(KIND, where, f"expected a mapping with keys {', '.join(ENTRY_KEYS)}, got {shown(entry)}.")
    for key in entry:
        if key not in ENTRY_KEYS:
            fail(
                KIND,
                f"{where}.{key}",
                f"unknown key{close_matches(key, ENTRY_KEYS)}; allowed: {', '.join(ENTRY_KEYS)}.",
            )
    if not entry.get("path"):
        fail(KIND, f"{where}.path", "is required (the dataset directory).")
    path = Path(str(entry["path"])).expanduser()
    if not path.is_dir():
        fail(KIND, f"{where}.path", f"{path} does not exist or is not a directory.")
    role, kind = entry.get("role", "adaptation"), entry.get("kind", "classification")
    if role not in ROLES:
        fail(KIND, f"{where}.role", f"expected one of {', '.join(ROLES)}, got {shown(role)}.")
    if kind not in KINDS:
        fail(KIND, f"{where}.kind", f"expected one of {', '.join(KINDS)}, got {shown(kind)}.")
    template = check_template(KIND, f"{where}.template", entry.get("template", DEFAULT_TEMPLATE))
    check_fraction(KIND, f"{where}.test_fraction", entry.get("test_fraction", 0.2))
    return DatasetInfo(str(entry.get("name") or path.name), role, template, kind)


def class_folders(directory: Path, option: str, inside: DataRoot) -> list[tuple[str, list[Path]]]:
    """(class name, image files) per non-hidden sub-folder, sorted by folder name; each folder and file
    inside the dataset's directory once symlinks are followed (:class:`DataRoot`)."""
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        fail(KIND, option, f"{directory} has no class folders (dataset is empty).")
    out, empty = [], []
    for folder in folders:
        inside.check(folder, f"folder {directory}", folder.name)
        files = [inside.check(f, f"class folder {folder}", f.name) for f in image_files(folder)]
        if not files:
            empty.append(str(folder))
        out.append((folder.name.replace("_", " "), files))
    if empty:
        what = f"class folder {empty[0]} holds" if len(empty) == 1 else f"{len(empty)} class folders hold"
        fail(KIND, option, f"{what} no images ({', '.join(IMAGE_EXTENSIONS)}): {listed(empty)}.")
    return out


def dataset_items(info: DatasetInfo, entry: dict, n: int, seed: int, options: dict) -> list[Item]:
    root, option = Path(str(entry["path"])).expanduser(), f"datasets[{n}].path"
    inside = DataRoot(KIND, option, root, options)
    items = []
    if all((root / split).is_dir() for split in SPLITS):
        for split in ("test",) if info.role == "heldout" else SPLITS:  # a held-out set is only evaluated
            for name, files in class_folders(root / split, option, inside):
                items += [Item(info.name, name, split, f, info.template.format(name)) for f in files]
        return items
    pairs = [(name, f) for name, files in class_folders(root, option, inside) for f in files]
    if info.role == "heldout":  # only evaluated: every image is a test image
        return [Item(info.name, name, "test", f, info.template.format(name)) for name, f in pairs]
    mask = split_mask([name for name, _ in pairs], float(entry.get("test_fraction", 0.2)), (seed, info.name))
    return [
        Item(info.name, name, "test" if test else "train", f, info.template.format(name))
        for (name, f), test in zip(pairs, mask)
    ]


def scan(options: dict) -> Catalog:
    options = check_options(KIND, options, OPTIONS)
    entries = options.get("datasets")
    if not isinstance(entries, list) or not entries:
        fail(
            KIND, "datasets", f"expected a non-empty list of {{name, path, role, ...}} mappings, got {shown(entries)}."
        )
    seed = options.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        fail(KIND, "seed", f"expected an integer, got {shown(seed)}.")
    infos = [check_entry(n, entry) for n, entry in enumerate(entries)]
    names = [i.name for i in infos]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        fail(KIND, "datasets", f"dataset name {shown(duplicate)} is used more than once.")
    items = [item for n, info in enumerate(infos) for item in dataset_items(info, entries[n], n, seed, options)]
    catalog = Catalog(infos, cap_items(items, common_settings(KIND, options)[2]))
    check_catalog(KIND, catalog)
    return catalog
