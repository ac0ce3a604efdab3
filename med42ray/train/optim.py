"""Optimiser, learning-rate schedule and precision, built from `train.optimizer/schedule`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from med42ray.config import OptimizerConfig, ScheduleConfig
from med42ray.models import bf16_available


def resolve_precision(precision: str, use_gpu: bool) -> str:
    """`auto` is bf16 where the GPU supports it, fp32 otherwise (CPU training)."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_available(use_gpu) else "fp32"


def warmup_steps(schedule: ScheduleConfig, total_steps: int) -> int:
    return math.ceil(schedule.warmup_ratio * total_steps)


def lr_lambda(schedule: ScheduleConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear warmup, then cosine/linear decay or constant.

    Decay ends at `min_lr_ratio` of the peak at `total_steps`.
    """
    warm = warmup_steps(schedule, total_steps)
    floor = schedule.min_lr_ratio

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if schedule.name == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if schedule.name == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # linear
            decay = 1.0 - progress
        return floor + (1.0 - floor) * decay

    return factor


def build_scheduler(optimizer, schedule: ScheduleConfig, total_steps: int):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total_steps))


def build_optimizer(params: Iterable, cfg: OptimizerConfig, fused: bool = False):
    """Torch AdamW over the trainable parameters (the DDP path and the reference); `fused`
    (GPU) runs the whole update as one CUDA kernel per parameter group."""
    import torch

    return torch.optim.AdamW(
        [p for p in params if p.requires_grad],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )
