"""The FoMo-in-Flux layout, as the TIME authors' code base ships it (pseudope/fomo_in_flux, ``data_lib/``;
docs/method.md §6). Nothing is moved or renamed: ``info_dir`` is their ``data_lib/00_info`` (default: ``root``),
``root`` their data directory, ``stream_file`` one of their ``stream_construction/*.json`` files.

Info files, all in ``info_dir``:

* ``<DATASET>_<split>.json``: a JSON object mapping an image path, relative to ``<root>/<DATASET>/``, to
  its record ``{classname, default_caption, primer_caption, synthetic_caption, synthetic_merged_caption,
  target}``. The train split is ``train`` (else ``train_mini``), the test split ``test`` (else ``val``):
  ``MTSD_{train,val}``, ``iNATURALIST2021_{train_mini,val}``. A dataset with a test file only is an
  evaluation-only (held-out) set.
* ``<DATASET>_<split>_<N>.json``: the variant resized to N px (their ``create_resized_variant_if_possible``);
  its paths start with the folder ``<DATASET>_<split>_<N>/`` inside ``<root>/<DATASET>/``. With
  ``resized: N`` it replaces ``<DATASET>_<split>.json`` where both it and that folder exist (their rule).
* ``<DATASET>_classnames.json``: a JSON list of class names in ``target`` order. Class ids follow it (a
  record's own ``classname`` may be spelled differently, e.g. "femur-left" for "femur left").

Captions (their rule): ``default_caption`` when not null, else ``synthetic_merged_caption``; a list gives
its first entry for training and all its entries for retrieval scoring; with neither, the class caption.
A dataset's prompt template is ``templates[DATASET]``, else its ``primer_caption`` with the record's
class name replaced by ``{}`` (``"A photo of a {} texture."`` for DTD), else ``"A photo of a {}."``.
Records whose ``classname`` is null are caption-only: such a dataset is a retrieval set (Recall@5), one
class per distinct caption, template ``"{}"``.

Roles: ``heldout`` and ``pretrain`` list datasets (their test / train split is read); the adaptation
datasets are those of the stream file, else every other dataset with a train file. The stream file is a
JSON list of ``"DATASET+++classname"``: DATASET is the info-file name (``DTD``, their combined streams) or
its lower-case handle (``dtd``, ``oxford_pets`` for ``OXFORDPETS``; their per-dataset streams), compared
ignoring case and any character but letters and digits; dataset options accept both spellings too.
Without a stream file the stream is every adaptation class with training images, in class-id order.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from time_ray.core.errors import shown
from time_ray.core.real_data.common import (
    SPLITS,
    Catalog,
    DataRoot,
    DatasetInfo,
    Item,
    cap_items,
    check_catalog,
    check_names_exist,
    check_options,
    close_matches,
    common_settings,
    existing_path,
    fail,
    name_list,
    regular_file,
    resolve_roles,
    templates_option,
)

KIND = "fomo"
OPTIONS = ("root", "info_dir", "stream_file", "heldout", "pretrain", "retrieval", "resized", "templates")
SEPARATOR = "+++"
DEFAULT_TEMPLATE = "A photo of a {}."  # the authors' default primer (DatasetScaffold)
SPLIT_NAMES = {"train": ("train", "train_mini"), "test": ("test", "val")}
INFO_FILE = re.compile(r"^(?P<dataset>.+?)_(?P<split>train_mini|train|test|val)(?:_(?P<size>\d+))?\.json$")
CLASSNAMES_FILE = re.compile(r"^(?P<dataset>.+)_classnames\.json$")
RECORD = "{classname, default_caption, primer_caption, synthetic_caption, synthetic_merged_caption, target}"
READS = {"adaptation": SPLITS, "heldout": ("test",), "pretrain": ("train",)}  # the splits each role uses


@dataclass
class DatasetFiles:
    info: dict[tuple[str, int | None], Path] = field(default_factory=dict)  # (split name, size) -> file
    classnames: Path | None = None

    def split_file(self, split: str, images: Path, resized: int | None) -> Path | None:
        """The info file of our split 'train' or 'test': the first of its split names present, the
        resized variant when asked for and its image folder exists."""
        for name in SPLIT_NAMES[split]:
            if resized and (name, resized) in self.info and (images / f"{images.name}_{name}_{resized}").is_dir():
                return self.info[name, resized]
            if (name, None) in self.info:
                return self.info[name, None]
        return None


def find_datasets(info_dir: Path, options: dict) -> dict[str, DatasetFiles]:
    """Every dataset with an info file in ``info_dir``, by its name (the file-name prefix); an info file that
    is a symlink leading outside ``info_dir`` is refused (:class:`DataRoot`)."""
    found: dict[str, DatasetFiles] = {}
    classnames: dict[str, Path] = {}
    inside = DataRoot(KIND, "info_dir", info_dir, options)
    for path in sorted(info_dir.iterdir()):
        if not path.is_file() or not (CLASSNAMES_FILE.match(path.name) or INFO_FILE.match(path.name)):
            continue
        inside.check(path, f"info directory {info_dir}", path.name)
        if match := CLASSNAMES_FILE.match(path.name):
            classnames[match["dataset"]] = path
        elif match := INFO_FILE.match(path.name):
            size = int(match["size"]) if match["size"] else None
            found.setdefault(match["dataset"], DatasetFiles()).info[match["split"], size] = path
    if not found:
        fail(
            KIND,
            "info_dir",
            f"no info files <DATASET>_train.json / <DATASET>_test.json in {info_dir} (the "
            "authors ship them in data_lib/00_info of their repository; set info_dir to that).",
        )
    for name, path in classnames.items():
        if name in found:
            found[name].classnames = path
    return found


def handle(name: str) -> str:
    """What two spellings of a dataset share: 'OXFORDPETS' and 'oxford_pets' give 'oxfordpets'."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def canonical(name: str, found, option: str) -> str:
    """The dataset name ``name`` stands for (itself, or the one dataset with the same handle);
    ``name`` unchanged when none matches (the caller reports it)."""
    if name in found:
        return name
    matches = [f for f in found if handle(f) == handle(name)]
    if len(matches) > 1:
        fail(KIND, option, f"dataset {shown(name)} could mean {', '.join(matches)}; use the exact name.")
    return matches[0] if matches else name


def read_json(path: Path, what: str):
    regular_file(KIND, "info_dir", path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        fail(KIND, "info_dir", f"cannot read {what} {path} as JSON: {' '.join(str(exc).split())}")


def read_info(path: Path) -> dict[str, dict]:
    """The records of one info file: image path -> record, checked for the keys every record has."""
    data = read_json(path, "info file")
    if not isinstance(data, dict):
        fail(
            KIND,
            "info_dir",
            f"info file {path}: expected a JSON object mapping each image path (relative to "
            f"<root>/<DATASET>/) to its record {RECORD}; got a JSON {type(data).__name__}.",
        )
    for key, record in data.items():
        if not isinstance(record, dict):
            fail(
                KIND,
                "info_dir",
                f"info file {path}: the record of {shown(key)} must be an object {RECORD}, got {record!r:.80}.",
            )
        missing = [k for k in ("classname", "target") if k not in record]
        if missing:
            fail(
                KIND,
                "info_dir",
                f"info file {path}: the record of {shown(key)} lacks {', '.join(missing)} "
                f"(keys found: {', '.join(map(str, record))}; expected {RECORD}).",
            )
    return data


def read_classnames(name: str, files: DatasetFiles, info_dir: Path) -> list[str]:
    if files.classnames is None:
        fail(
            KIND,
            "info_dir",
            f"dataset {shown(name)} has class labels but no {info_dir / f'{name}_classnames.json'} "
            "(expected a JSON list of class names in target order).",
        )
    names = read_json(files.classnames, "class-name file")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        fail(
            KIND,
            "info_dir",
            f"class-name file {files.classnames}: expected a non-empty JSON list of class names "
            f"in target order, got {names!r:.80}.",
        )
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        fail(KIND, "info_dir", f"class-name file {files.classnames}: {', '.join(map(repr, twice))} listed twice.")
    return names


def first_text(value) -> str | None:
    """A caption field: a string, or a list whose first non-blank string is taken."""
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str) and text.strip():
            return text.strip()
    return None


def record_caption(record: dict) -> str | None:
    """The authors' rule: ``default_caption`` when not null, else ``synthetic_merged_caption``."""
    for key in ("default_caption", "synthetic_merged_caption"):
        if (text := first_text(record.get(key))) is not None:
            return text
    return None


def record_captions(record: dict) -> tuple[str, ...]:
    """Every caption of the field :func:`record_caption` takes its caption from (an image of a retrieval set
    such as MSCOCO has five; the authors score retrieval over all of them)."""
    for key in ("default_caption", "synthetic_merged_caption"):
        value = record.get(key)
        texts = [t.strip() for t in (value if isinstance(value, list) else [value]) if isinstance(t, str) and t.strip()]
        if texts:
            return tuple(dict.fromkeys(texts))
    return ()


def primer_template(records) -> str | None:
    """The template behind the records' ``primer_caption``: the first primer with one occurrence of its
    class name replaced by ``{}``, the occurrence that reproduces the most primers of other classes
    ("A photo of a {}, a type of bird." and not "A photo of a bird, a type of {}.")."""
    samples: dict[str, str] = {}  # one primer per class name
    for record in records:
        primer, name = record.get("primer_caption"), record.get("classname")
        if isinstance(primer, str) and isinstance(name, str) and name and name in primer:
            samples.setdefault(name, primer)
    if not samples:
        return None
    name, primer = next(iter(samples.items()))

    def escape(text: str) -> str:
        return text.replace("{", "{{").replace("}", "}}")

    starts = [m.start() for m in re.finditer(re.escape(name), primer)]
    candidates = [escape(primer[:i]) + "{}" + escape(primer[i + len(name) :]) for i in starts]
    return max(candidates, key=lambda t: sum(t.format(n) == p for n, p in samples.items()))


def dataset_catalog(
    name: str, role: str, files: DatasetFiles, inside: DataRoot, info_dir: Path, options: dict, template: str | None
) -> tuple[DatasetInfo, list[Item]]:
    """The dataset's info (template, kind, class order) and one item per image of the splits its role reads
    (each image path inside the data root, :class:`DataRoot`)."""
    images, resized = inside.path / name, options.get("resized")
    paths: dict[str, Path] = {}
    for split in READS[role]:
        path = files.split_file(split, images, resized)
        if path is None:
            expected = " or ".join(f"{name}_{s}.json" for s in SPLIT_NAMES[split])
            fail(
                KIND,
                "info_dir",
                f"dataset {shown(name)} ({role}) needs a {split} info file: no {expected} in {info_dir}.",
            )
        paths[split] = path
    if not images.is_dir():
        fail(
            KIND,
            "root",
            f"{images} is not a directory: the images of {name} are read from <root>/{name}/<path in "
            f"{next(iter(paths.values())).name}>.",
        )
    records = {split: read_info(path) for split, path in paths.items()}
    for split, recs in records.items():
        if not recs:
            fail(
                KIND,
                "info_dir",
                f"info file {paths[split]} holds no records (dataset {shown(name)} needs {split} images).",
            )
    labelled = {split: [r["classname"] is not None for r in recs.values()] for split, recs in records.items()}
    if any(any(flags) for flags in labelled.values()) and not all(all(flags) for flags in labelled.values()):
        where = ", ".join(str(paths[s]) for s in paths)
        fail(
            KIND,
            "info_dir",
            f"dataset {shown(name)} mixes records with a classname and caption-only records (classname "
            f"null) in {where}; a dataset is either classified or caption-only (retrieval).",
        )
    caption_only = not any(any(flags) for flags in labelled.values())
    classes: list[str] = [] if caption_only else read_classnames(name, files, info_dir)
    template = template or ("{}" if caption_only else None)
    template = template or primer_template(r for recs in records.values() for r in recs.values()) or DEFAULT_TEMPLATE
    items = []
    for split, recs in records.items():
        for key, record in recs.items():
            caption = record_caption(record)
            if caption_only:
                if caption is None:
                    fail(
                        KIND,
                        "info_dir",
                        f"info file {paths[split]}: the record of {shown(key)} has neither a classname "
                        "nor a caption (default_caption or synthetic_merged_caption).",
                    )
                classname = caption
            else:
                target = record["target"]
                if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(classes):
                    fail(
                        KIND,
                        "info_dir",
                        f"info file {paths[split]}: the record of {shown(key)} has target {shown(target)}; "
                        f"expected an index into the {len(classes)} names of {files.classnames}.",
                    )
                classname = classes[target]
                caption = caption or template.format(classname)
            captions = record_captions(record) if caption_only else ()
            image = inside.check(images / key, f"info file {paths[split]}", key)
            items.append(Item(name, classname, split, image, caption, captions if len(captions) > 1 else ()))
    if caption_only:
        classes = list(dict.fromkeys(item.classname for item in items))
    kind = "retrieval" if caption_only or name in options.get("retrieval", []) else "classification"
    return DatasetInfo(name, role, template, kind, tuple(classes)), items


def read_stream(path_text: str, found, info_dir: Path) -> list[tuple[str, str, str]]:
    """(dataset, classname, entry) per stream-file entry, in file order; the dataset name canonical."""
    path = Path(path_text).expanduser()
    if not path.exists():
        fail(KIND, "stream_file", f"{path} does not exist.")
    regular_file(KIND, "stream_file", path, "the stream file")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        fail(KIND, "stream_file", f"cannot read {path} as JSON: {' '.join(str(exc).split())}")
    if not isinstance(entries, list) or not entries:
        fail(KIND, "stream_file", f'{path} must hold a non-empty JSON list of "DATASET+++classname" strings.')
    pairs = []
    for entry in entries:
        if not isinstance(entry, str) or SEPARATOR not in entry:
            fail(KIND, "stream_file", f'entry {shown(entry)} in {path} is not a "DATASET+++classname" string.')
        dataset, classname = entry.split(SEPARATOR, 1)
        dataset = canonical(dataset, found, "stream_file")
        if dataset not in found:
            fail(
                KIND,
                "stream_file",
                f"entry {shown(entry)} in {path} names unknown dataset {shown(dataset)}"
                f"{close_matches(dataset, found)}: no info file {dataset}_train.json in "
                f"{info_dir}; datasets found: {', '.join(sorted(found))}.",
            )
        pairs.append((dataset, classname, entry))
    return pairs


def check_stream(
    stream, path: str, datasets: list[DatasetInfo], items: list[Item], files, root: Path, resized: int | None
) -> list[tuple[str, str]]:
    """Every entry a class of an adaptation dataset that has training images, each once."""
    info = {d.name: d for d in datasets}
    trained = {(i.dataset, i.classname) for i in items if i.split == "train"}
    seen = set()
    for dataset, classname, entry in stream:
        where = f"entry {shown(entry)} in {path}"
        classes = info[dataset].classes or ()
        if classname not in classes:
            source = files[dataset].classnames or "its info files"
            fail(
                KIND,
                "stream_file",
                f"{where}: dataset {shown(dataset)} has no class {shown(classname)}"
                f"{close_matches(classname, classes)} (its classes: {source}).",
            )
        if (dataset, classname) not in trained:
            train_file = files[dataset].split_file("train", root / dataset, resized)
            fail(KIND, "stream_file", f"{where}: class {shown(classname)} has no training images in {train_file}.")
        if (dataset, classname) in seen:
            fail(KIND, "stream_file", f"{where} appears more than once.")
        seen.add((dataset, classname))
    return [(d, c) for d, c, _ in stream]


def scan(options: dict) -> Catalog:
    options = check_options(KIND, options, OPTIONS)
    root = existing_path(KIND, options, "root", directory=True)
    info_dir = existing_path(KIND, options, "info_dir", directory=True) if options.get("info_dir") else root
    resized = options.get("resized")
    if resized is not None and (isinstance(resized, bool) or not isinstance(resized, int) or resized < 1):
        fail(KIND, "resized", f"expected the image size of the resized variant (e.g. 224), got {shown(resized)}.")
    found = find_datasets(info_dir, options)
    names = {
        key: [canonical(n, found, key) for n in name_list(KIND, options, key)]
        for key in ("heldout", "pretrain", "retrieval")
    }
    templates = {canonical(n, found, "templates"): t for n, t in templates_option(KIND, options).items()}
    check_names_exist(KIND, "templates", templates, found)
    options = {**options, **names}
    roles, _ = resolve_roles(KIND, options, found)
    stream = read_stream(options["stream_file"], found, info_dir) if options.get("stream_file") else None
    for dataset, _, entry in stream or []:
        if roles.get(dataset, "adaptation") != "adaptation":
            fail(
                KIND,
                "stream_file",
                f"entry {shown(entry)} in {options['stream_file']} names dataset {shown(dataset)}, "
                f"which is listed as {roles[dataset]}; the stream holds adaptation datasets "
                "only.",
            )
    if stream is not None:
        adaptation = {d for d, _, _ in stream}
    else:
        adaptation = {n for n, f in found.items() if n not in roles and f.split_file("train", root / n, None)}
    order = {"adaptation": 0, "heldout": 1, "pretrain": 2}
    inside = DataRoot(KIND, "root", root, options)
    used = sorted(adaptation | set(roles), key=lambda n: (order[roles.get(n, "adaptation")], n))
    datasets, items = [], []
    for name in used:
        info, ds_items = dataset_catalog(
            name, roles.get(name, "adaptation"), found[name], inside, info_dir, options, templates.get(name)
        )
        datasets.append(info)
        items += ds_items
    items = cap_items(items, common_settings(KIND, options)[2])
    if stream is not None:
        pairs = check_stream(stream, options["stream_file"], datasets, items, found, root, resized)
    else:
        trained = {(i.dataset, i.classname) for i in items if i.split == "train"}
        pairs = [
            (d.name, c) for d in datasets if d.role == "adaptation" for c in d.classes or () if (d.name, c) in trained
        ]
    catalog = Catalog(datasets, items, pairs)
    check_catalog(KIND, catalog)
    return catalog
