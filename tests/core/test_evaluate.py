from dataclasses import replace

import numpy as np
import pytest
import torch

from time_ray.core.benchmark import Benchmark, BenchmarkSpec, Dataset
from time_ray.core.contracts import ExperimentSettings
from time_ray.core.data_stats import task_accuracy
from time_ray.core.evaluate import eval_size, eval_subset, evaluate_all, recall_at_5, task_name
from time_ray.core.experiment import Experiment
from time_ray.core.metrics import summarize


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


def two_dataset_bench():
    """Two classification datasets (a: classes 0, 1; b: classes 2, 3), two test images per class;
    image i's pixel holds i, so the Lookup stand-in decides each image's prediction."""
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    images = torch.zeros(8, 3, 2, 2)
    images[:, 0, 0, 0] = torch.arange(8)
    datasets = {"a": Dataset("a", "adaptation", "{}", (0, 1)), "b": Dataset("b", "adaptation", "{}", (2, 3))}
    return Benchmark(["c0", "c1", "c2", "c3"], ["a", "a", "b", "b"], datasets, images, labels, images, labels)


def test_task_records_hand_computed():
    """Predictions (each within its dataset's classes): images 0..7 -> 0, 1, 1, 1 | 3, 3, 3, 3, so
    class 0: 1/2, class 1: 2/2, class 2: 0/2, class 3: 2/2 right. Task 1 = {0, 2} (across both
    datasets): 1/4; task 2 = {1, 3}: 4/4; task 3 = {2}: 0/2."""
    eye = torch.eye(4)
    predicted = [0, 1, 1, 1, 3, 3, 3, 3]
    model = Lookup(eye[predicted], eye)
    tokenize = lambda texts: torch.tensor([[int(t[1:])] for t in texts])  # noqa: E731
    bench = two_dataset_bench()
    records = evaluate_all(model, bench, tokenize, tasks=[[0, 2], [1, 3], [2]])
    assert records[:2] == [
        {"dataset": "a", "role": "adaptation", "metric": "accuracy", "value": 0.75, "n_eval": 4},
        {"dataset": "b", "role": "adaptation", "metric": "accuracy", "value": 0.5, "n_eval": 4},
    ]
    assert records[2:] == [
        {"dataset": "task_01", "role": "task", "metric": "accuracy", "value": 0.25, "n_eval": 4},
        {"dataset": "task_02", "role": "task", "metric": "accuracy", "value": 1.0, "n_eval": 4},
        {"dataset": "task_03", "role": "task", "metric": "accuracy", "value": 0.0, "n_eval": 2},
    ]
    # without tasks, only the datasets' records, as before; summaries ignore the task records
    assert evaluate_all(model, bench, tokenize) == records[:2]
    assert summarize(records)["a_ka"] == summarize(records[:2])["a_ka"] == 0.625


def test_a_task_of_retrieval_classes_only_has_no_record():
    n = 10
    tokenize = lambda texts: torch.tensor([[int(t[1:])] for t in texts])  # noqa: E731
    records = evaluate_all(Lookup(torch.eye(n), torch.eye(n)), tiny_bench(n), tokenize, tasks=[[0]])
    assert [r["role"] for r in records] == ["heldout"]


def test_task_names_are_zero_padded_to_the_stream_length():
    assert task_name(3, 20) == "task_03" and task_name(3, 120) == "task_003"


def test_experiment_task_records_on_the_builtin_benchmark(cache_dir):
    """Experiment.evaluate's task records: with one dataset per task they are the datasets' own
    accuracies; with a random (class-incremental) order they equal the accuracy computed image by
    image on each task's classes (data_stats.task_accuracy, a separate forward pass); the multitask
    reference (one task, the union) still reports the stream's tasks; summaries ignore them."""
    spec = BenchmarkSpec(
        adaptation_datasets=3, heldout_datasets=1, classes_per_dataset=3, pretrain_classes=2, test_per_class=4
    )
    settings = ExperimentSettings(arch="tiny-clip", tasks=3, benchmark=spec)
    experiment = Experiment.from_settings(settings)
    torch.manual_seed(0)
    model = experiment.new_model()
    records = experiment.evaluate(model)
    by_name = {r["dataset"]: r for r in records}
    tasks = [r for r in records if r["role"] == "task"]
    assert [r["dataset"] for r in tasks] == ["task_01", "task_02", "task_03"]
    for j, r in enumerate(tasks):
        same = by_name[f"adapt-{j:02d}"]
        assert r["value"] == pytest.approx(same["value"]) and r["n_eval"] == same["n_eval"] == 12
    datasets = [r for r in records if r["role"] != "task"]
    assert summarize(records) == summarize(datasets)

    shuffled = Experiment.from_settings(replace(settings, tasks=2, order="random"))
    tasks = [r for r in shuffled.evaluate(model) if r["role"] == "task"]
    assert [r["n_eval"] for r in tasks] == [4 * len(t) for t in shuffled.stream] == [20, 16]
    for t, r in enumerate(tasks, start=1):
        assert r["value"] == pytest.approx(task_accuracy(model, shuffled, t))

    multitask = Experiment.from_settings(replace(settings, tasks=2, order="random"), multitask=True)
    assert multitask.tasks == 1 and multitask.eval_tasks == shuffled.stream
    assert multitask.evaluate(model) == shuffled.evaluate(model)

    subset = experiment.evaluate(model, subset=True)  # the subsets are whole sets this small
    assert [r["n_eval"] for r in subset if r["role"] == "task"] == [12, 12, 12]
