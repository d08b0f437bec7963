"""Images read per batch: no process holds a dataset's pixels (docs/data.md).

A benchmark's ``train_images`` / ``test_images`` are either a tensor (the built-in benchmark: small,
generated, kept whole) or :class:`ImageFiles` (real data: the paths only). :func:`read` turns a list of
indices into one model-ready batch either way: fp32, normalized, at the model's input size.

Real images are decoded by a pool of threads (PIL releases the GIL while it decodes and resamples) into
uint8 at the model's size; the batch is moved to the device as uint8 and normalized there, so a
process holds at most the batches in flight. The two transforms are the TIME authors' (their
``data_lib/__init__.py``, ``create_transforms_list``):

* evaluation: ``Resize`` of the shorter side to the model's size (bicubic) + ``CenterCrop``;
* training: ``RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(3/4, 4/3), bicubic)``, its parameters drawn
  from a generator seeded by (seed, step, position in the batch), so a run is reproducible and a
  retried expert sees the same crops.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from time_ray.core.errors import ConfigError
from time_ray.core.safe_yaml import not_regular

CROP_SCALE = (0.9, 1.0)  # the authors' RandomResizedCrop scale
CROP_RATIO = (3 / 4, 4 / 3)
MAX_IMAGE_PIXELS = 64_000_000  # a larger image is refused before it is decoded (a decompression bomb)


@dataclass(frozen=True)
class Crop:
    """Where one training image is cropped from: a per-step seed and the image's position in the batch."""

    seed: int
    step: int
    position: int

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a RandomResizedCrop: an area fraction in CROP_SCALE and an aspect
        ratio log-uniform in CROP_RATIO, ten tries, else the whole image cut to the nearest allowed ratio."""
        rng = np.random.default_rng([self.seed, self.step, self.position, 23])
        area = width * height
        log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
        for _ in range(10):
            target = area * rng.uniform(*CROP_SCALE)
            ratio = math.exp(rng.uniform(*log_ratio))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        ratio = width / height
        if ratio < CROP_RATIO[0]:
            w, h = width, round(width / CROP_RATIO[0])
        elif ratio > CROP_RATIO[1]:
            w, h = round(height * CROP_RATIO[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h


def open_rgb(source: Path | bytes, name: str, size: int) -> Image.Image:
    """The image as RGB (a JPEG much larger than ``size`` decoded at a reduced scale, still at least
    ``size``); an unreadable, oversized or non-regular file raises ConfigError naming it."""
    if isinstance(source, Path):
        _check_regular(source, name)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ConfigError(
                    f"real data: image {name} has {image.width}x{image.height} pixels, more than "
                    f"{MAX_IMAGE_PIXELS:,}; refused before decoding."
                )
            if min(image.size) >= 2 * size:
                image.draft("RGB", (size, size))
            if image.mode == "RGB":
                image.load()  # already RGB: no converted copy
                return image
            return image.convert("RGB")
    except ConfigError:
        raise
    except Exception as exc:  # PIL raises several types for unreadable files
        raise ConfigError(f"real data: cannot read image {name}: {exc}") from None


def regular_problem(path: str | os.PathLike) -> tuple[os.stat_result | None, str | None]:
    """``(stat, None)`` for a regular file; ``(stat or None, why)`` otherwise: a FIFO or a device would block
    or never end, so only regular files are opened (one ``os.stat``)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return None, str(exc.strerror or exc)
    return info, not_regular(info.st_mode)


def _check_regular(path: Path, name: str) -> None:
    """ConfigError naming the image unless it is a regular file (:func:`regular_problem`)."""
    if (why := regular_problem(path)[1]) is not None:
        raise ConfigError(f"real data: cannot read image {name}: {why}.")


def eval_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Resize (shorter side to ``size``, bicubic) + center crop: uint8 [size, size, 3]."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def train_pixels(image: Image.Image, size: int, crop: Crop) -> np.ndarray:
    """RandomResizedCrop of ``crop`` resized to ``size`` x ``size`` (bicubic): uint8 [size, size, 3]."""
    box = crop.box(*image.size)
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)


def pixels(source: Path | bytes, name: str, size: int, crop: Crop | None) -> np.ndarray:
    image = open_rgb(source, name, size)
    return eval_pixels(image, size) if crop is None else train_pixels(image, size, crop)


def decode_batch(
    sources: Sequence[Path | bytes], names: Sequence[str], size: int, crops: Sequence[Crop] | None, pool
) -> torch.Tensor:
    """uint8 [n, 3, size, size] of the sources (files or encoded bytes), decoded by ``pool``'s threads into
    one numpy buffer (torch is not called per image: each call would start its thread pool)."""
    out = np.empty((len(sources), size, size, 3), dtype=np.uint8)
    jobs = [(src, name, size, None if crops is None else crops[i]) for i, (src, name) in enumerate(zip(sources, names))]
    for i, array in enumerate(pool.map(lambda job: pixels(*job), jobs)):
        out[i] = array
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [n, 3, H, W] (on any device) -> fp32 (x / 255 - mean) / std on the same device."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return batch.float().div_(255.0).sub_(mean_t).div_(std_t)  # in place: one fp32 copy of the batch


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


class ImageFiles:
    """The images of one split of real data, by path: decoded per batch, never kept.

    ``size`` is the side images are read at (the model's input size); ``mean``/``std`` normalize them;
    ``workers`` is the number of decoding threads (a pool made on first use, one per process)."""

    def __init__(
        self, paths: Sequence[Path], size: int | None, mean: Sequence[float], std: Sequence[float], workers: int
    ):
        self.paths = list(paths)
        self.size = size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        side = self.size or 0
        return (len(self.paths), 3, side, side)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")
        return self._pool

    def uint8(self, index, size: int | None = None, crops: Sequence[Crop] | None = None) -> torch.Tensor:
        """uint8 [len(index), 3, s, s] (s: ``size``, else the files' ``size``), on the CPU."""
        side = size or self.size
        if not side:
            raise ValueError("ImageFiles: no image size given")
        paths = [self.paths[int(i)] for i in np.asarray(index).reshape(-1)]
        return decode_batch(paths, [str(p) for p in paths], side, crops, self.pool)

    def __getitem__(self, index) -> torch.Tensor:
        """fp32 normalized images ``index`` (an int gives one [3, s, s] image, a slice or an index array a
        batch) with the evaluation transform, on the CPU."""
        if isinstance(index, int):
            return self[[index]][0]
        if isinstance(index, slice):
            index = list(range(len(self.paths)))[index]
        return normalize(self.uint8(index), self.mean, self.std)


Images = torch.Tensor | ImageFiles
EVAL_BATCH = 512  # images per evaluation read (core.evaluate)


def disk_bytes(paths: Sequence[Path], sample: int = 256) -> int:
    """Bytes on disk of the files, estimated from ``sample`` of them spread evenly (a stat each); exact
    when there are no more than ``sample``."""
    if not paths:
        return 0
    picked = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(sample, len(paths)))]
    sizes = [p.stat().st_size if p.is_file() else 0 for p in picked]
    return round(sum(sizes) / len(sizes) * len(paths))


def memory_per_process(batch: int, size: int) -> int:
    """Bytes of pixels a training or evaluating process holds at most: training, two batches of uint8 (one
    being decoded ahead) and one of fp32; evaluation, one read of EVAL_BATCH images in uint8 and fp32."""
    pixels = 3 * size * size
    return max(batch * pixels * (2 + 4), EVAL_BATCH * pixels * (1 + 4))


def read(
    images: Images, index, device="cpu", size: int | None = None, crops: Sequence[Crop] | None = None
) -> torch.Tensor:
    """The model-ready batch of ``images[index]``: fp32 on ``device`` at ``size`` (None: as stored).

    A tensor (the built-in benchmark) is cast and, when its size differs, resized bilinearly; image files
    are decoded (with the training ``crops`` when given, else the evaluation transform) and normalized on
    the device."""
    if isinstance(images, ImageFiles):
        return normalize(images.uint8(index, size, crops).to(device), images.mean, images.std)
    return fit_images(images[torch.as_tensor(index)].to(device), size)


def fit_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Images as fp32 at the model's input size (bilinear resize when the stored size differs)."""
    images = images.float()
    if size is not None and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images
