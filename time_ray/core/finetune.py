"""Contrastive finetuning of both CLIP towers (docs/method.md §6): symmetric InfoNCE with the model's
learnable temperature, AdamW, grad-norm clipping, a fresh optimizer and a cosine schedule with
linear warm-up per task, fp16 autocast on GPU, and a per-task seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.2
    warmup: float = 0.1  # fraction of steps with linear warm-up
    min_lr_ratio: float = 1e-3  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""


def clip_loss(image_features, text_features, logit_scale) -> torch.Tensor:
    """Symmetric contrastive loss: mean of image->text and text->image cross-entropy."""
    logits = logit_scale * image_features @ text_features.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def lr_factor(step: int, total: int, warmup: float, min_ratio: float) -> float:
    """Linear warm-up over ``warmup * total`` steps, then cosine from 1 down to ``min_ratio``."""
    warm = int(warmup * total)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def finetune(model, batches, settings: TrainSettings, device: torch.device | str = "cpu", on_step=None) -> dict:
    """Trains ``model`` in place for ``settings.steps`` batches from ``batches`` (core.batches.TrainBatches:
    ``next()`` gives images and caption tokens on ``device``). Returns steps, seconds and the final loss.
    Raises :class:`NonFiniteLoss` naming the step where the loss stopped being finite.
    """
    torch.manual_seed(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, settings.steps, settings.warmup, settings.min_lr_ratio)
    )
    use_amp = torch.device(device).type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model.train()
    start, loss_value = time.perf_counter(), float("nan")
    for step in range(settings.steps):
        images, tokens = batches.next()
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.float16, enabled=use_amp):
            image_features, text_features, logit_scale = model(images, tokens)[:3]
            loss = clip_loss(image_features.float(), text_features.float(), logit_scale.float())
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()} at step {step + 1} of {settings.steps}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        with torch.no_grad():  # CLIP's temperature clamp: logit_scale <= ln(100)
            getattr(model, "module", model).logit_scale.clamp_(0, math.log(100))
        loss_value = loss.item()
        if on_step is not None:
            on_step(step + 1, loss_value)
    return {"steps": settings.steps, "seconds": time.perf_counter() - start, "loss": loss_value}


def flops_per_step(model, batch: int, image_size: int, context: int, device="cpu") -> float:
    """FLOPs of one forward + backward training step on a batch of ``batch`` images of ``image_size`` px and
    captions of ``context`` tokens, counted by FlopCounterMode. The count depends on the shapes only, so it
    is taken on synthetic batches (no image read), and on batches of 1 and 2 only: every operation of a
    CLIP step is linear in the batch but the B x B similarity logits (forward and backward), so the count
    is exactly f(B) = a B + c B^2, and f(1), f(2) give a and c. A step of ViT-B/16 at batch 512 is thus
    counted in a second, without the tens of GiB of activations it would need on the CPU."""
    f1, f2 = (
        _counted_flops(model, 1, image_size, context, device),
        _counted_flops(model, 2, image_size, context, device),
    )
    quadratic = (f2 - 2 * f1) / 2
    return (f1 - quadratic) * batch + quadratic * batch * batch


def _counted_flops(model, batch: int, image_size: int, context: int, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.zeros((batch, 3, image_size, image_size), device=device)
    tokens = torch.zeros((batch, context), dtype=torch.long, device=device)
    tokens[:, 0], tokens[:, 1] = 1, 2  # a start and an end token: text pooling finds the end
    counter = FlopCounterMode(display=False)
    with counter:
        image_features, text_features, logit_scale = model(images, tokens)[:3]
        clip_loss(image_features, text_features, logit_scale).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())
