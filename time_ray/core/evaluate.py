"""Zero-shot classification of a deployed model (TIME.md §6): one prompt template per dataset,
argmax over that dataset's classes."""

from __future__ import annotations

import torch

from time_ray.core.benchmark import Benchmark


@torch.no_grad()
def zero_shot_accuracy(model, bench: Benchmark, tokenize, dataset: str, device="cpu",
                       batch_size: int = 512) -> tuple[float, int]:
    """Accuracy of ``model`` on the test split of ``dataset`` and the number of images evaluated."""
    ds = bench.datasets[dataset]
    model.eval()
    prompts = tokenize([ds.template.format(bench.class_names[c]) for c in ds.classes]).to(device)
    text = model.encode_text(prompts, normalize=True)
    classes = torch.tensor(ds.classes)
    index = torch.nonzero(torch.isin(bench.test_labels, classes)).flatten()
    correct = 0
    for chunk in index.split(batch_size):
        image = model.encode_image(bench.test_images[chunk].to(device), normalize=True)
        predicted = classes[(image @ text.T).argmax(dim=1).cpu()]
        correct += int((predicted == bench.test_labels[chunk]).sum())
    return correct / len(index), len(index)


def evaluate_all(model, bench: Benchmark, tokenize, device="cpu") -> list[dict]:
    """One record per dataset: dataset, role, metric, value (0..1), n_eval."""
    records = []
    for name, ds in bench.datasets.items():
        value, n = zero_shot_accuracy(model, bench, tokenize, name, device)
        records.append({"dataset": name, "role": ds.role, "metric": "accuracy", "value": value, "n_eval": n})
    return records
