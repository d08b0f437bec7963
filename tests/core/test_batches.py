"""Training batches read per batch (core.batches, core.images): the pretraining pool's share, seeded
crops, the authors' transforms, tokens made per batch, FLOPs from a synthetic batch, and retrieval over
every caption of an image."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from time_ray.core import models
from time_ray.core.batches import CaptionTokens, TrainBatches
from time_ray.core.benchmark import Benchmark, BenchmarkSpec, Dataset, build_benchmark
from time_ray.core.contracts import ExperimentSettings, TrainingRecipe
from time_ray.core.evaluate import recall_at_5
from time_ray.core.experiment import Experiment
from time_ray.core.finetune import clip_loss, flops_per_step
from time_ray.core.images import CROP_RATIO, CROP_SCALE, Crop, ImageFiles, read
from time_ray.core.real_data.example import write_fomo_layout, write_shards
from time_ray.core.real_data.shards import ShardStream, expand_shards
from time_ray.core.stream import Mixture, MixtureSampler, make_stream

SPEC = BenchmarkSpec(
    adaptation_datasets=2, heldout_datasets=1, classes_per_dataset=3, pretrain_classes=2, train_per_class=8
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("fomo")
    options = write_fomo_layout(base, adaptation=2, heldout=1, classes=3, n_train=4, n_test=2, size=48)
    return {**options, "pretrain_shards": write_shards(base / "pool", shards=2, per_shard=5, size=48)}


def experiment(tree, **data) -> Experiment:
    settings = ExperimentSettings(
        arch="tiny-clip",
        tasks=2,
        benchmark_kind="fomo",
        data={**tree, **data},
        captions="image",
        training=TrainingRecipe(batch_size=9),
    )
    return Experiment.from_settings(settings)


def test_crop_boxes_stay_within_the_authors_scale_and_ratio_and_are_seeded():
    boxes = [Crop(7, step, pos).box(224, 224) for step in range(20) for pos in range(8)]
    for left, top, right, bottom in boxes:
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 224 and 0 <= top and bottom <= 224
        assert CROP_SCALE[0] - 0.01 <= w * h / 224**2 <= CROP_SCALE[1]
        assert CROP_RATIO[0] - 0.01 <= w / h <= CROP_RATIO[1] + 0.01
    assert len(set(boxes)) > 100  # crops differ between steps and positions
    assert Crop(7, 3, 2).box(224, 224) == Crop(7, 3, 2).box(224, 224)
    assert Crop(7, 3, 2).box(224, 224) != Crop(8, 3, 2).box(224, 224)
    # a very wide image: no try fits, the whole height is cut to the widest allowed ratio, centred
    assert Crop(0, 0, 0).box(1000, 10) == (493, 0, 506, 10)


def test_evaluation_transform_resizes_the_shorter_side_and_centre_crops(tmp_path):
    image = Image.new("RGB", (30, 10), (255, 0, 0))  # wide: red, a green middle third, red
    image.paste((0, 255, 0), (10, 0, 20, 10))
    image.save(tmp_path / "a.png")
    files = ImageFiles([tmp_path / "a.png"], 10, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), workers=1)
    pixels = files.uint8([0])[0]
    assert pixels.shape == (3, 10, 10) and pixels.dtype == torch.uint8
    assert pixels[1].float().mean() > 250 and pixels[0].float().mean() < 5  # only the green middle
    assert torch.allclose(read(files, [0]), pixels.float()[None] / 255)


def test_builtin_batches_equal_the_tensors_indexed_directly():
    """The built-in benchmark keeps its tensors: a batch is exactly the indexed images and class tokens."""
    bench = build_benchmark(SPEC)
    tokenize = models.tokenizer("tiny-clip")
    sampler = MixtureSampler(bench, make_stream(bench, 2), 2, Mixture(), 12, seed=3)
    index = MixtureSampler(bench, make_stream(bench, 2), 2, Mixture(), 12, seed=3).batch()
    images, tokens = TrainBatches(bench, sampler, CaptionTokens(bench, tokenize), size=32).next()
    assert torch.equal(images, bench.train_images[torch.as_tensor(index)].float())
    classes = tokenize([bench.caption(c) for c in range(len(bench.class_names))])
    assert torch.equal(tokens, classes[bench.train_labels[torch.as_tensor(index)]])


def test_pool_fills_the_pretraining_share_first_with_its_captions(tree):
    exp = experiment(tree)
    sampler = exp.sampler(2, seed=0)
    assert sampler.pool_count == 3 and sampler.batch_len == 9  # 33% of 9 from the pool; a full batch
    expected = ShardStream(list(expand_shards(tree["pretrain_shards"])), seed=exp_seed(2), start_shard=1).take(3)
    with exp.batches(2, seed=0, steps=1) as batches:
        images, tokens = batches.next()
    assert images.shape == (9, 3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(tokens[:3], models.tokenizer("tiny-clip")([s.caption for s in expected]))
    without = experiment(tree, pretrain_shards=None)
    assert without.sampler(2, seed=0).batch_len == 6  # no pool, no pretrain-role data: that share is left out


def exp_seed(t: int, seed: int = 0) -> int:
    from time_ray.core.experiment import task_seed

    return task_seed(seed, t)


def test_batches_are_reproducible_with_augmentation_and_prepared_ahead_identically(tree):
    def draw(exp, steps):
        with exp.batches(1, seed=5, steps=steps) as batches:
            return [batches.next() for _ in range(steps)]

    first, again = draw(experiment(tree), 3), draw(experiment(tree), 3)
    for (a, ta), (b, tb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    plain = draw(experiment(tree, augment=False), 3)
    assert not torch.equal(first[0][0], plain[0][0])  # the crops change the pixels
    # the background thread prepares batch s + 1 while s trains: the same as preparing each when asked
    exp = experiment(tree)
    with exp.batches(1, seed=5, steps=3) as batches:
        in_turn = [batches.cpu_batch(s) for s in range(3)]
    for (pixels, tokens), (images, want_tokens) in zip(in_turn, first):
        assert torch.equal(tokens, want_tokens)
        files = exp.bench.train_images
        assert torch.allclose(
            images,
            (pixels.float() / 255 - torch.tensor(files.mean).view(1, 3, 1, 1))
            / torch.tensor(files.std).view(1, 3, 1, 1),
        )


def test_flops_of_a_synthetic_batch_equal_a_real_batch():
    from torch.utils.flop_counter import FlopCounterMode

    bench = build_benchmark(SPEC)
    model = models.create_model("tiny-clip")
    sampler = MixtureSampler(bench, make_stream(bench, 2), 1, Mixture(), 10, seed=0)
    images, tokens = TrainBatches(bench, sampler, CaptionTokens(bench, models.tokenizer("tiny-clip")), size=32).next()
    counter = FlopCounterMode(display=False)
    with counter:
        clip_loss(*model(images, tokens)[:3]).backward()
    model.zero_grad()
    assert flops_per_step(model, 10, 32, tokens.shape[1]) == counter.get_total_flops() > 0


class Towers(torch.nn.Module):
    """A stand-in CLIP whose features are given: image i -> row i of ``image``, a caption -> its row."""

    def __init__(self, image: torch.Tensor, text: dict):
        super().__init__()
        self.image, self.text = image, text

    def encode_image(self, batch, normalize=True):
        return self.image[batch[:, 0, 0, 0].long()]

    def encode_text(self, tokens, normalize=True):
        return torch.stack([self.text[int(t)] for t in tokens])


def test_retrieval_scores_every_caption_of_an_image_as_the_authors_do():
    """7 images on a circle, caption "i" on image i; image 0 also owns caption "x", which lies on image 3.
    Image->text: each image's own caption is its nearest: 7/7. Text->image over the 8 captions: the 5
    images nearest "x" are 3, 2, 4, 1, 5, not 0: 7/8. Recall@5 = (1 + 7/8) / 2. Scoring the first caption
    only would give 1. When image 4 owns the text "x" too, both "x" rows hit: 1."""
    step = 2 * math.pi / 7
    unit = lambda a: torch.tensor([math.cos(a), math.sin(a)])  # noqa: E731
    image = torch.stack([unit(i * step) for i in range(7)])
    text = {**{i: unit(i * step) for i in range(7)}, 99: unit(3 * step)}
    sets = [("0", "99")] + [(str(i),) for i in range(1, 7)]
    bench = Benchmark(
        class_names=[str(i) for i in range(7)],
        class_dataset=["r"] * 7,
        datasets={"r": Dataset("r", "heldout", "{}", tuple(range(7)), "retrieval")},
        train_images=torch.zeros(0, 3, 1, 1),
        train_labels=torch.zeros(0, dtype=torch.long),
        test_images=torch.arange(7.0).view(7, 1, 1, 1).expand(7, 3, 1, 1),
        test_labels=torch.arange(7),
        test_captions=[c[0] for c in sets],
        test_caption_sets=sets,
    )
    tokenize = lambda texts: torch.tensor([int(t) for t in texts])  # noqa: E731
    model = Towers(image, text)
    assert recall_at_5(model, bench, tokenize, np.arange(7)) == pytest.approx((1 + 7 / 8) / 2)
    first_only = Benchmark(**{**bench.__dict__, "test_caption_sets": None})
    assert recall_at_5(model, first_only, tokenize, np.arange(7)) == 1.0
    sets[4] = ("4", "99")
    shared = Benchmark(**{**bench.__dict__, "test_caption_sets": sets})
    assert recall_at_5(model, shared, tokenize, np.arange(7)) == 1.0
