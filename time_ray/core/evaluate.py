"""Evaluation of a deployed model (TIME.md §6): zero-shot classification with one prompt template
per dataset (argmax over that dataset's classes), and for retrieval datasets the mean of
image->text and text->image Recall@5 over per-image captions."""

from __future__ import annotations

import numpy as np
import torch

from time_ray.core.benchmark import Benchmark, Dataset, fit_images


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


def _encode_images(model, images: torch.Tensor, device, batch_size: int = 512) -> torch.Tensor:
    size = _input_size(model)
    return torch.cat(
        [model.encode_image(fit_images(chunk.to(device), size), normalize=True) for chunk in images.split(batch_size)]
    )


def _input_size(model) -> int | None:
    """The image size an open_clip model expects (None for stand-ins without one)."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    return size[0] if isinstance(size, (tuple, list)) else size


@torch.no_grad()
def zero_shot_accuracy(model, bench: Benchmark, tokenize, ds: Dataset, index: np.ndarray, device="cpu") -> float:
    prompts = tokenize([ds.template.format(bench.class_names[c]) for c in ds.classes]).to(device)
    text = model.encode_text(prompts, normalize=True)
    classes = torch.tensor(ds.classes)
    image = _encode_images(model, bench.test_images[torch.as_tensor(index)], device)
    predicted = classes[(image @ text.T).argmax(dim=1).cpu()]
    return float((predicted == bench.test_labels[torch.as_tensor(index)]).float().mean())


@torch.no_grad()
def recall_at_5(model, bench: Benchmark, tokenize, index: np.ndarray, device="cpu") -> float:
    """Mean of image->text and text->image Recall@5 over the images ``index`` and their captions.
    A caption text shared by several images counts as the same caption (a hit for each of them)."""
    assert bench.test_captions is not None, "the benchmark has no test captions (retrieval needs them)"
    captions = [bench.test_captions[i] for i in index]
    ids = {c: n for n, c in enumerate(dict.fromkeys(captions))}
    caption_id = torch.tensor([ids[c] for c in captions])
    text = torch.cat(
        [
            model.encode_text(tokenize(captions[i : i + 512]).to(device), normalize=True)
            for i in range(0, len(captions), 512)
        ]
    )
    image = _encode_images(model, bench.test_images[torch.as_tensor(index)], device)
    sim = (image @ text.T).cpu()
    k = min(5, len(index))
    i2t = (caption_id[sim.topk(k, dim=1).indices] == caption_id[:, None]).any(dim=1).float().mean()
    t2i = (caption_id[sim.T.topk(k, dim=1).indices] == caption_id[:, None]).any(dim=1).float().mean()
    return float((i2t + t2i) / 2)


def evaluate_all(model, bench: Benchmark, tokenize, device="cpu", subset: bool = False, seed: int = 0) -> list[dict]:
    """One record per dataset: dataset, role, metric, value (0..1), n_eval. With ``subset`` each
    dataset is evaluated on its class-balanced seeded subset of FoMo-in-Flux size (``eval_size``)."""
    model.eval()
    records = []
    for d, (name, ds) in enumerate(bench.datasets.items()):
        index = bench.test_indices(ds.classes)
        if subset:
            index = index[
                eval_subset(bench.test_labels[index].numpy(), eval_size(len(index), len(ds.classes)), seed + d)
            ]
        if ds.kind == "retrieval":
            metric, value = "recall@5", recall_at_5(model, bench, tokenize, index, device)
        else:
            metric, value = "accuracy", zero_shot_accuracy(model, bench, tokenize, ds, index, device)
        records.append({"dataset": name, "role": ds.role, "metric": metric, "value": value, "n_eval": len(index)})
    return records
