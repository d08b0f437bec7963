import numpy as np
import pytest
import torch

from time_ray.core.benchmark import BenchmarkSpec, build_benchmark
from time_ray.core.stream import Mixture, MixtureSampler, PretrainSampler, make_stream

SPEC = BenchmarkSpec(
    adaptation_datasets=3,
    heldout_datasets=2,
    classes_per_dataset=4,
    pretrain_classes=6,
    train_per_class=5,
    test_per_class=3,
)


def test_benchmark_is_deterministic_and_structured():
    a = build_benchmark(SPEC)
    build_benchmark.cache_clear()
    b = build_benchmark(SPEC)
    assert torch.equal(a.train_images, b.train_images) and a.class_names == b.class_names
    assert len(set(a.class_names)) == len(a.class_names) == 5 * 4 + 6
    roles = [d.role for d in a.datasets.values()]
    assert roles.count("adaptation") == 3 and roles.count("heldout") == 2
    adaptation = {c for d in a.datasets.values() if d.role == "adaptation" for c in d.classes}
    heldout = {c for d in a.datasets.values() if d.role == "heldout" for c in d.classes}
    assert heldout <= set(a.pretrain_classes)
    # half of each adaptation dataset's 4 classes is known to the base model (adaptation_known = 0.5), the
    # same ones after a reload from the disk cache
    known = adaptation & set(a.pretrain_classes)
    assert known == set(a.known_classes) == set(b.known_classes) and len(known) == 3 * 2
    assert all(len(known & set(d.classes)) == 2 for d in a.datasets.values() if d.role == "adaptation")
    none = build_benchmark(BenchmarkSpec(**{**SPEC.__dict__, "adaptation_known": 0.0}))
    assert not adaptation & set(none.pretrain_classes)
    assert torch.equal(none.train_images, a.train_images)  # which classes are known changes no image
    assert a.train_images.shape == (26 * 5, 3, 32, 32) and a.test_images.shape == (26 * 3, 3, 32, 32)
    assert a.caption(0) == a.datasets["adapt-00"].template.format(a.class_names[0])


def test_the_base_model_sees_a_share_of_each_known_class_and_every_image_of_a_generic_concept():
    """known_exposure: of each held-out class and known adaptation class, round(share x train_per_class) training
    images (at least one) are in the pretraining pool; generic concepts keep all theirs; no image changes."""
    spec = BenchmarkSpec(**{**SPEC.__dict__, "known_exposure": 0.4})  # 2 of each known class's 5 images
    bench = build_benchmark(spec)
    build_benchmark.cache_clear()
    reloaded = build_benchmark(spec)  # the same pool after a reload from the disk cache
    index = bench.pretrain_indices()
    assert np.array_equal(index, reloaded.pretrain_indices()) and bench.known_pretrain_images == 2
    labels = bench.train_labels.numpy()
    counts = {int(c): int(n) for c, n in zip(*np.unique(labels[index], return_counts=True))}
    generic = set(bench.generic_classes)
    assert set(counts) == set(bench.pretrain_classes)  # every known class still has some images
    assert all(n == (5 if c in generic else 2) for c, n in counts.items()), counts
    first = [int(i) for i in np.nonzero(labels == bench.pretrain_classes[0])[0][:2]]
    assert [int(i) for i in index if labels[i] == bench.pretrain_classes[0]] == first  # its first images
    assert torch.equal(bench.train_images, build_benchmark(SPEC).train_images)
    full = build_benchmark(BenchmarkSpec(**{**SPEC.__dict__, "known_exposure": 1.0}))
    assert np.array_equal(full.pretrain_indices(), full.train_indices(full.pretrain_classes))  # every image
    one = build_benchmark(BenchmarkSpec(**{**SPEC.__dict__, "known_exposure": 0.01}))
    assert one.known_pretrain_images == 1  # at least one image: the concept is known, if barely
    drawn = PretrainSampler(bench, 64, seed=0).batch()
    assert set(drawn.tolist()) <= set(index.tolist())


def test_other_seed_gives_other_data():
    other = build_benchmark(BenchmarkSpec(**{**SPEC.__dict__, "seed": 1}))
    assert not torch.equal(other.train_images, build_benchmark(SPEC).train_images)


@pytest.mark.parametrize("order", ["dataset", "random", "reversed"])
def test_stream_cuts_all_adaptation_pairs_into_t_chunks(order):
    bench = build_benchmark(SPEC)
    stream = make_stream(bench, 5, order, seed=0)
    flat = [c for task in stream for c in task]
    assert len(stream) == 5 and sorted(flat) == list(range(12)) and {len(t) for t in stream} <= {2, 3}
    if order == "dataset":
        assert stream[0] == [0, 1, 2]
    if order == "reversed":
        assert stream[0] == [11, 10, 9]


def test_stream_rejects_more_tasks_than_classes():
    with pytest.raises(ValueError, match="between 1 and 12"):
        make_stream(build_benchmark(SPEC), 13)


def test_mixture_counts_follow_the_spec():
    assert Mixture().counts(100, first_task=False) == (33, 34, 33)
    # first task: the replay share goes to the other two in proportion
    assert Mixture().counts(100, first_task=True) == (49, 51, 0)
    assert Mixture(0, 1, 0).counts(64, first_task=False) == (0, 64, 0)


def test_sampler_draws_current_task_replay_and_pretraining():
    bench = build_benchmark(SPEC)
    stream = make_stream(bench, 3)
    batch = MixtureSampler(bench, stream, 2, Mixture(), 30, seed=0).batch()
    labels = bench.train_labels[batch].numpy()
    assert len(batch) == 30
    assert np.isin(labels[:10], bench.generic_classes).all()  # generic data, not held-out sets
    assert np.isin(labels[10:20], stream[1]).all()
    assert np.isin(labels[20:], stream[0]).all()


def test_multitask_experiment_has_one_task_with_every_stream_class():
    from time_ray.core.contracts import ExperimentSettings, TrainingRecipe
    from time_ray.core.experiment import Experiment

    settings = ExperimentSettings(
        arch="tiny-clip", benchmark=SPEC, tasks=4, order="random", training=TrainingRecipe(batch_size=8)
    )
    stream = Experiment.from_settings(settings).stream
    union = Experiment.from_settings(settings, multitask=True).stream
    assert len(stream) == 4 and len(union) == 1
    assert sorted(union[0]) == sorted(c for task in stream for c in task)
