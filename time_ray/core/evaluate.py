"""Evaluation of a deployed model (docs/method.md §6): zero-shot classification with one prompt template
per dataset (argmax over that dataset's classes), and for retrieval datasets the mean of
image->text and text->image Recall@5 over per-image captions."""

from __future__ import annotations

import numpy as np
import torch

from time_ray.core.benchmark import Benchmark, Dataset
from time_ray.core.images import Images, read


def eval_size(n_test: int, n_classes: int) -> int:
    """FoMo-in-Flux subset size during the stream: min(|test|, max(2 x classes, 300, 10% of |test|))."""
    return min(n_test, max(2 * n_classes, 300, int(0.1 * n_test)))


def eval_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A class-balanced, seeded subset of ``size`` positions into ``labels`` (sorted)."""
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.nonzero(labels == c)[0]) for c in classes]
    picked: list[int] = []
    rank = 0
    while len(picked) < size:  # round robin over classes: balanced up to one sample
        for members in per_class:
            if rank < len(members) and len(picked) < size:
                picked.append(members[rank])
        rank += 1
    return np.sort(np.asarray(picked))


def _encode_images(model, images: Images, index: np.ndarray, device, batch_size: int = 512) -> torch.Tensor:
    """Normalized image features of ``images[index]``, read ``batch_size`` at a time (core.images.read)."""
    size = _input_size(model)
    index = np.asarray(index, dtype=np.int64)
    return torch.cat(
        [
            model.encode_image(read(images, index[i : i + batch_size], device, size), normalize=True)
            for i in range(0, len(index), batch_size)
        ]
    )


def _input_size(model) -> int | None:
    """The image size an open_clip model expects (None for stand-ins without one)."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    return size[0] if isinstance(size, (tuple, list)) else size


@torch.no_grad()
def zero_shot_predictions(
    model, bench: Benchmark, tokenize, ds: Dataset, index: np.ndarray, device="cpu"
) -> torch.Tensor:
    """The predicted global class id of each test image ``index``: argmax over ``ds``'s classes."""
    prompts = tokenize([ds.template.format(bench.class_names[c]) for c in ds.classes]).to(device)
    text = model.encode_text(prompts, normalize=True)
    classes = torch.tensor(ds.classes)
    image = _encode_images(model, bench.test_images, index, device)
    return classes[(image @ text.T).argmax(dim=1).cpu()]


def zero_shot_accuracy(model, bench: Benchmark, tokenize, ds: Dataset, index: np.ndarray, device="cpu") -> float:
    predicted = zero_shot_predictions(model, bench, tokenize, ds, index, device)
    return float((predicted == bench.test_labels[torch.as_tensor(index)]).float().mean())


@torch.no_grad()
def recall_at_5(
    model, bench: Benchmark, tokenize, index: np.ndarray, device="cpu", per_image: list | None = None
) -> float:
    """Mean of image->text and text->image Recall@5 over the images ``index`` and all their captions (an
    image may have several: ``bench.test_caption_sets``), as the TIME authors score retrieval
    (``utils/metrics.py``, ``RecallAtK``): image->text averages over images (a hit when one of the image's
    captions is among its 5 nearest captions), text->image over captions (a hit when the caption's image is
    among its 5 nearest images). A caption text shared by several images counts as each one's caption."""
    assert bench.test_captions is not None, "the benchmark has no test captions (retrieval needs them)"
    sets = [
        bench.test_caption_sets[i] if bench.test_caption_sets is not None else (bench.test_captions[i],) for i in index
    ]
    texts = [c for captions in sets for c in captions]
    ids = {c: n for n, c in enumerate(dict.fromkeys(texts))}
    owns = torch.zeros((len(sets), len(ids)), dtype=torch.bool)  # image i has caption text c
    for i, captions in enumerate(sets):
        owns[i, [ids[c] for c in captions]] = True
    caption_id = torch.tensor([ids[c] for c in texts])
    text = torch.cat(
        [model.encode_text(tokenize(texts[i : i + 512]).to(device), normalize=True) for i in range(0, len(texts), 512)]
    )
    image = _encode_images(model, bench.test_images, index, device)
    sim = (image @ text.T).cpu()  # [images, captions]
    rows = torch.arange(len(sets))[:, None]
    nearest = caption_id[sim.topk(min(5, len(texts)), dim=1).indices]  # text ids of each image's 5 nearest captions
    found = owns[rows, nearest].any(dim=1)  # image i: one of its captions among its 5 nearest
    if per_image is not None:
        per_image.append(found.numpy())
    i2t = found.float().mean()
    images = sim.T.topk(min(5, len(sets)), dim=1).indices  # each caption's 5 nearest images
    t2i = owns[images, caption_id[:, None]].any(dim=1).float().mean()
    return float((i2t + t2i) / 2)


def _keep(predictions: dict | None, index: np.ndarray, predicted: np.ndarray, correct: np.ndarray) -> None:
    if predictions is None:
        return
    for key, values in (("test_index", index), ("predicted", predicted), ("correct", correct)):
        predictions[key] = np.concatenate([predictions.get(key, np.zeros(0, values.dtype)), np.asarray(values)])


def task_name(j: int, tasks: int) -> str:
    """The ``dataset`` of task j's record: ``task_01`` .. (zero-padded to at least two digits)."""
    return f"task_{j:0{max(2, len(str(tasks)))}d}"


def evaluate_all(
    model,
    bench: Benchmark,
    tokenize,
    device="cpu",
    subset: bool = False,
    seed: int = 0,
    tasks: list[list[int]] | None = None,
    predictions: dict | None = None,
) -> list[dict]:
    """One record per dataset: dataset, role, metric, value (0..1), n_eval. With ``subset`` each
    dataset is evaluated on its class-balanced seeded subset of FoMo-in-Flux size (``eval_size``).

    ``predictions`` (a dict, filled here): what each evaluated test image gave, as equal-length arrays:
    ``test_index`` (the image's position in the test split), ``predicted`` (the class id predicted within
    its dataset's classes; -1 for a retrieval image) and ``correct`` (the prediction is its label; for a
    retrieval image, one of its captions is among its 5 nearest: the image->text half of Recall@5).

    ``tasks`` (the stream: each task's class ids) adds one record per task j after the datasets':
    dataset ``task_name(j)``, role ``task``, metric ``accuracy``: the accuracy over the evaluated test
    images of task j's classes (the subsets' images with ``subset``), each classified within its own
    dataset's label space, from the same predictions as the datasets' records. Only classification
    datasets' images count; a task with none (retrieval classes only) gets no record."""
    model.eval()
    records = []
    scored, hits_of = [], []  # the classified test images and whether each was classified correctly
    for d, (name, ds) in enumerate(bench.datasets.items()):
        index = bench.test_indices(ds.classes)
        if subset:
            index = index[
                eval_subset(bench.test_labels[index].numpy(), eval_size(len(index), len(ds.classes)), seed + d)
            ]
        if ds.kind == "retrieval":
            found: list = []
            metric, value = "recall@5", recall_at_5(model, bench, tokenize, index, device, found)
            _keep(predictions, index, np.full(len(index), -1), found[0])
        else:
            predicted = zero_shot_predictions(model, bench, tokenize, ds, index, device)
            right = predicted == bench.test_labels[torch.as_tensor(index)]
            scored.append(index)
            hits_of.append(right.numpy())
            _keep(predictions, index, predicted.numpy(), right.numpy())
            metric, value = "accuracy", float(right.float().mean())
        records.append({"dataset": name, "role": ds.role, "metric": metric, "value": value, "n_eval": len(index)})
    if tasks and scored:
        labels = bench.test_labels.numpy()[np.concatenate(scored)]
        hits = np.concatenate(hits_of)
        for j, task in enumerate(tasks, start=1):
            mine = hits[np.isin(labels, np.asarray(task, dtype=labels.dtype))]
            if len(mine):
                records.append(
                    {
                        "dataset": task_name(j, len(tasks)),
                        "role": "task",
                        "metric": "accuracy",
                        "value": float(mine.mean()),
                        "n_eval": len(mine),
                    }
                )
    return records
