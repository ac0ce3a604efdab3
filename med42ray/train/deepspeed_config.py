"""The DeepSpeed config dict, generated from `train` and overridden by a user JSON.

Generated keys: batch sizes, gradient clipping, precision, ZeRO stage and offload, and an AdamW
optimiser. On GPU the settings the field's trainers use (the HF Trainer's `auto` values,
Axolotl's and OpenRLHF's ZeRO configs): `overlap_comm` (gradient reduction overlapped with the
backward pass), buckets sized from the model's hidden size, and torch's fused AdamW kernel
(`fused: true`; DeepSpeed's own FusedAdam would need a JIT-compiled CUDA op). On CPU
`overlap_comm` stays off: it rides on CUDA streams.

The learning-rate schedule stays on the torch side (a `LambdaLR` handed to
`deepspeed.initialize`), so DDP and DeepSpeed runs follow the very same schedule, unless the
user JSON names its own `scheduler`. A JSON at `train.deepspeed.config_path` is deep-merged on
top: its keys win, nested sections merge key by key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from med42ray.config import TrainConfig, deep_merge


def load_user_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"{path}: cannot read DeepSpeed config: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid DeepSpeed JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a DeepSpeed config must be a JSON object")
    return raw


def zero_buckets(stage: int, hidden_size: int | None) -> dict[str, Any]:
    """Bucket sizes as the HF Trainer's `auto` sets them from the hidden size: reduce buckets
    of hidden², ZeRO-3 prefetch of 0.9·hidden² and parameters under 10·hidden kept whole."""
    if not hidden_size:
        return {"reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8}
    square = hidden_size * hidden_size
    buckets: dict[str, Any] = {"reduce_bucket_size": square, "allgather_bucket_size": square}
    if stage == 3:
        buckets["stage3_prefetch_bucket_size"] = int(0.9 * square)
        buckets["stage3_param_persistence_threshold"] = 10 * hidden_size
    return buckets


def build_deepspeed_config(
    train: TrainConfig,
    world_size: int,
    precision: str,
    on_gpu: bool = False,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """The DeepSpeed dict for `train` on `world_size` workers at `precision` (fp32/bf16/fp16),
    with the GPU settings (module doc) when `on_gpu`; `hidden_size` sizes the buckets."""
    ds = train.deepspeed
    opt = train.optimizer
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": on_gpu and ds.zero_stage >= 2,
        **zero_buckets(ds.zero_stage, hidden_size if on_gpu else None),
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.micro_batch_size * train.gradient_accumulation_steps * world_size,
        "gradient_clipping": train.max_grad_norm,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": opt.lr,
                "betas": list(opt.betas),
                "eps": opt.eps,
                "weight_decay": opt.weight_decay,
                # torch's AdamW needs no compiled op; offloaded optimisers use DeepSpeed's CPUAdam
                "torch_adam": not ds.offload_optimizer,
                **({"fused": True} if on_gpu and not ds.offload_optimizer else {}),
            },
        },
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if ds.config_path:
        config = deep_merge(config, load_user_config(ds.config_path))
    return config
