"""The table layout: one CSV or parquet file with a row per image.

Columns: ``image`` (path relative to the table file's directory, or absolute; either way inside that
directory unless ``allow_outside_root`` is true) and ``caption`` (required);
``classname``, ``dataset`` (default: the file's stem), ``split`` ('train'|'test'; rows without one
are split class-stratified with ``test_fraction``, default 0.2, and ``seed``, default 0) and
``role`` ('adaptation'|'heldout'|'pretrain'; the ``heldout``/``pretrain`` options override it)
are optional. Rows without a classname are caption-only data: each distinct caption is a class of
its own and their dataset is scored by retrieval (Recall@5 over the per-image captions); a dataset
of caption-only rows gets the template "{}", so a class caption is the caption itself.
``retrieval`` lists further datasets scored by retrieval; ``templates`` maps a dataset name to its
prompt template (default "a photo of a {}.").
A held-out dataset is only evaluated: its rows without a split are all test images, its 'train' rows
are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from time_ray.core.errors import shown
from time_ray.core.real_data.common import (
    DEFAULT_TEMPLATE,
    ROLES,
    SPLITS,
    Catalog,
    DataRoot,
    DatasetInfo,
    Item,
    cap_items,
    check_catalog,
    check_fraction,
    check_names_exist,
    check_options,
    common_settings,
    existing_path,
    fail,
    is_missing,
    regular_file,
    resolve_roles,
    split_mask,
    templates_option,
)

KIND = "table"
OPTIONS = ("path", "heldout", "pretrain", "retrieval", "templates", "test_fraction", "seed")
REQUIRED = ("image", "caption")


def read_table(path: Path) -> list[dict]:
    import pandas as pd

    readers: dict[str, Callable[[Path], pd.DataFrame]] = {".csv": pd.read_csv, ".parquet": pd.read_parquet}
    if path.suffix.lower() not in readers:
        fail(KIND, "path", f"{path} must be a .csv or .parquet file.")
    regular_file(KIND, "path", path, "the table")
    try:
        frame = readers[path.suffix.lower()](path)
    except Exception as exc:
        fail(KIND, "path", f"cannot read {path}: {exc}")
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        fail(
            KIND,
            "path",
            f"{path} lacks the required column(s) {', '.join(missing)} "
            f"(columns found: {', '.join(map(str, frame.columns))}).",
        )
    if frame.empty:
        fail(KIND, "path", f"{path} has no rows (dataset is empty).")
    return frame.to_dict("records")


def cell(row: dict, column: str) -> str | None:
    value = row.get(column)
    return None if is_missing(value) else str(value).strip()


def row_roles(rows: list[dict], path: Path) -> dict[str, str]:
    """Role of each dataset from the optional ``role`` column (one role per dataset)."""
    roles: dict[str, str] = {}
    for n, row in enumerate(rows):
        role = cell(row, "role")
        if role is None:
            continue
        if role not in ROLES:
            fail(KIND, "path", f"{path} row {n}: role {shown(role)} is not one of {', '.join(ROLES)}.")
        if roles.setdefault(row["_dataset"], role) != role:
            fail(
                KIND,
                "path",
                f"{path} row {n}: dataset {shown(row['_dataset'])} has two roles, "
                f"{shown(roles[row['_dataset']])} and {shown(role)}.",
            )
    return roles


def scan(options: dict) -> Catalog:
    options = check_options(KIND, options, OPTIONS)
    path = existing_path(KIND, options, "path", directory=False)
    fraction = check_fraction(KIND, "test_fraction", options.get("test_fraction", 0.2))
    seed = options.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        fail(KIND, "seed", f"expected an integer, got {shown(seed)}.")
    rows = read_table(path)
    for row in rows:
        row["_dataset"] = cell(row, "dataset") or path.stem
    found = list(dict.fromkeys(row["_dataset"] for row in rows))
    roles, retrieval = resolve_roles(KIND, options, found)
    roles = {**row_roles(rows, path), **roles}
    templates = templates_option(KIND, options)
    check_names_exist(KIND, "templates", templates, found)
    caption_only = {row["_dataset"] for row in rows if cell(row, "classname") is None}
    labelled = {row["_dataset"] for row in rows if cell(row, "classname") is not None}
    infos = [
        DatasetInfo(
            name,
            roles.get(name, "adaptation"),
            "{}" if name not in labelled else templates.get(name, DEFAULT_TEMPLATE),
            "retrieval" if name in retrieval | caption_only else "classification",
        )
        for name in found
    ]
    template = {info.name: info.template for info in infos}
    role = {info.name: info.role for info in infos}
    inside = DataRoot(KIND, "path", path.parent, options)
    items: list[Item] = []
    unsplit: list[int] = []  # positions in items of the rows without a split
    for n, row in enumerate(rows):
        image, caption, classname, split = (cell(row, c) for c in ("image", "caption", "classname", "split"))
        if image is None or (caption is None and classname is None):
            fail(KIND, "path", f"{path} row {n} has no {'image' if image is None else 'caption or classname'}.")
        if split is not None and split not in SPLITS:
            fail(KIND, "path", f"{path} row {n}: split {shown(split)} is not 'train' or 'test'.")
        name = classname if classname is not None else caption
        assert name is not None  # refused above: a row has a classname or a caption
        if role[row["_dataset"]] == "heldout":  # only evaluated: no train split
            if split == "train":
                continue
            split = "test"
        caption = caption or template[row["_dataset"]].format(name)
        image_path = inside.check(path.parent / image, f"table {path} row {n}", image)
        if split is None:
            unsplit.append(len(items))
        items.append(Item(row["_dataset"], name, split or "", image_path, caption))
    for dataset in found:
        members = [n for n in unsplit if items[n].dataset == dataset]
        mask = split_mask([items[n].classname for n in members], fraction, (seed, dataset))
        for n, test in zip(members, mask):
            items[n] = Item(**{**items[n].__dict__, "split": "test" if test else "train"})
    catalog = Catalog(infos, cap_items(items, common_settings(KIND, options)[2]))
    check_catalog(KIND, catalog)
    return catalog
