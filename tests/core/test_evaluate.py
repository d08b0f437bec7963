import numpy as np
import pytest
import torch

from time_ray.core.benchmark import Benchmark, Dataset
from time_ray.core.evaluate import eval_size, eval_subset, evaluate_all, recall_at_5


def test_fomo_subset_size_rule():
    assert eval_size(200, 10) == 200  # small sets are evaluated whole
    assert eval_size(5000, 10) == 500  # 10% of |test|
    assert eval_size(1000, 10) == 300
    assert eval_size(10000, 800) == 1600  # 2 x classes


def test_subsets_are_class_balanced_and_seeded():
    labels = np.repeat(np.arange(4), [50, 20, 30, 100])
    pick = eval_subset(labels, 40, seed=3)
    assert len(pick) == 40 and len(set(pick)) == 40
    assert np.bincount(labels[pick]).tolist() == [10, 10, 10, 10]
    assert (pick == eval_subset(labels, 40, seed=3)).all() and not (pick == eval_subset(labels, 40, seed=4)).all()
    short = eval_subset(np.repeat(np.arange(2), [3, 30]), 10, seed=0)
    assert np.bincount(np.repeat(np.arange(2), [3, 30])[short]).tolist() == [3, 7]


class Lookup(torch.nn.Module):
    """A stand-in CLIP whose embeddings are looked up: image i -> E[i], caption/prompt text -> T[text]."""

    def __init__(self, image_emb, text_emb):
        super().__init__()
        self.image_emb, self.text_emb = image_emb, text_emb

    def encode_image(self, images, normalize=True):
        return torch.nn.functional.normalize(self.image_emb[images[:, 0, 0, 0].long()], dim=-1)

    def encode_text(self, tokens, normalize=True):
        return torch.nn.functional.normalize(self.text_emb[tokens[:, 0]], dim=-1)


def tiny_bench(n):
    images = torch.zeros(n, 3, 2, 2)
    images[:, 0, 0, 0] = torch.arange(n)
    ds = Dataset("ret", "heldout", "{}", (0,), "retrieval")
    return Benchmark(
        ["a"],
        ["ret"],
        {"ret": ds},
        images,
        torch.zeros(n, dtype=torch.long),
        images,
        torch.zeros(n, dtype=torch.long),
        [f"c{i}" for i in range(n)],
        [f"c{i}" for i in range(n)],
    )


def test_recall_at_5_hand_computed():
    n = 10
    tokenize = lambda texts: torch.tensor([[int(t[1:])] for t in texts])  # noqa: E731
    eye = torch.eye(n)
    assert recall_at_5(Lookup(eye, eye), tiny_bench(n), tokenize, np.arange(n)) == 1.0
    # image i's nearest captions are i+1..i+6 (cyclic): its own caption is never in the top 5
    far = torch.stack([sum(torch.roll(eye[i], k) * (10 - k) for k in range(1, 7)) for i in range(n)])
    assert recall_at_5(Lookup(far, eye), tiny_bench(n), tokenize, np.arange(n)) == pytest.approx(0.0)


def test_retrieval_datasets_report_recall_at_5():
    n = 10
    tokenize = lambda texts: torch.tensor([[int(t[1:])] for t in texts])  # noqa: E731
    records = evaluate_all(Lookup(torch.eye(n), torch.eye(n)), tiny_bench(n), tokenize)
    assert records == [{"dataset": "ret", "role": "heldout", "metric": "recall@5", "value": 1.0, "n_eval": n}]
