"""Training engines: how the model, optimiser and schedule are wrapped for data parallelism.

`DeepSpeedEngine` (ZeRO stage 0-3, optional CPU offload) and `DDPEngine` (Ray Train's
`prepare_model`, torch AdamW; the reference) offer the same small interface, so the recipe's one
loop drives either: `loss = engine.forward(batch, step_tokens)`, `engine.backward(loss)`,
`engine.step()` once per micro-batch (the optimiser steps on the accumulation boundary),
`save`/`load` for
checkpoints, `checkpoint_files` for the part of a checkpoint one rank needs to resume, and
`state_dict_for_export` for the final weights.

The loss is token-exact over the whole optimiser step: `forward(inputs, step_tokens)` returns
this micro-batch's summed token losses over the label tokens of the WHOLE step (all
micro-batches of all workers; transformers' `num_items_in_batch`), so the shares add up to the
step's token mean. Each engine's `backward` undoes the averaging its data parallelism applies
(DDP: over workers; DeepSpeed: over workers and accumulation steps), so the gradient is that of
the step's token mean, however unevenly label tokens fall across micro-batches and workers
(the gradient-accumulation bias the HF Trainer, TRL and torchtune fixed the same way).
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from med42ray.config import ExperimentConfig
from med42ray.train.deepspeed_config import build_deepspeed_config
from med42ray.train.optim import build_optimizer, build_scheduler, lr_lambda
from med42ray.train.packing import check_isolated
from med42ray.train.strategies import Strategy
from med42ray.train.tokenize import IGNORE_INDEX

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def trained_positions(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output layer and the loss only where a next token is trained: the model's
    `logits_to_keep` (positions t whose label t+1 is not ignored, in any row) and the labels
    already shifted onto them (`shift_labels`, which transformers' causal-LM loss and Liger's
    fused linear-cross-entropy take as given).

    Why: with assistant-only labels most positions (system prompt, question, options) train
    nothing, yet the HF forward computes [tokens x vocab] logits and a log-softmax for all of
    them. The loss and every gradient are the same (ignored positions contribute zero); the
    output layer's matmuls and the logits' memory shrink to the label positions (measured on 2
    CPU cores, tiny Llama, 41% label tokens: forward + backward of a packed step 1.2x faster).
    """
    keep = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    return {"logits_to_keep": keep, "shift_labels": labels[:, keep + 1]}


class TrainingEngine(ABC):
    """Wraps model, optimiser and schedule for data-parallel training (one per worker)."""

    def __init__(self, cfg: ExperimentConfig, strategy: Strategy, precision: str, world: int):
        self.cfg = cfg
        self.strategy = strategy
        self.precision = precision
        self.world = world
        self.module: torch.nn.Module | None = None  # the unwrapped HF / PEFT model

    # --- model construction -------------------------------------------------------------
    load_dtype = torch.float32

    def model_init_context(self):
        """Context in which the model is loaded (ZeRO-3 partitions weights while loading)."""
        return contextlib.nullcontext()

    @abstractmethod
    def wrap(self, model: torch.nn.Module, total_steps: int) -> None: ...

    # --- one micro-batch ------------------------------------------------------------------
    def forward(
        self, inputs: dict[str, torch.Tensor], step_tokens: float | None = None
    ) -> torch.Tensor:
        """The loss of one micro-batch: its share of the step's token mean when `step_tokens`
        (label tokens of the whole step, all workers) is given, else its own token mean.
        Refuses a packed layout that a kernel could read across samples (`check_isolated`)."""
        check_isolated(inputs, getattr(self.module.config, "_attn_implementation", None))
        extra = trained_positions(inputs["labels"])
        if step_tokens is not None:
            extra["num_items_in_batch"] = torch.tensor(step_tokens, device=self.device)
        with self._autocast():
            return self.model(**inputs, **extra, use_cache=False).loss

    def _autocast(self):
        return contextlib.nullcontext()

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a micro-batch's share of the step loss (`forward` with `step_tokens`)."""

    @abstractmethod
    def step(self) -> bool:
        """After each micro-batch; returns True when the optimiser stepped."""

    @property
    @abstractmethod
    def lr(self) -> float: ...

    @property
    @abstractmethod
    def grad_norm(self) -> float | None: ...

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    # --- state ----------------------------------------------------------------------------
    @abstractmethod
    def save(self, path: Path, rank: int) -> None: ...

    @abstractmethod
    def load(self, path: Path) -> None: ...

    @abstractmethod
    def checkpoint_files(self, listing: list[str], rank: int, world: int) -> list[str]:
        """The files of a checkpoint (`listing`: relative paths) that `load` reads on `rank`."""

    def state_dict_for_export(self, names: list[str], rank: int) -> dict[str, Any] | None:
        """Full tensors of `names` on rank 0 (None elsewhere); every rank must call it."""
        params = dict(self.module.named_parameters())
        out: dict[str, Any] = {}
        for name in names:
            with self.gathered([params[name]]):
                if rank == 0:
                    out[name] = params[name].detach().to("cpu", copy=True)
        return out if rank == 0 else None

    def gathered(self, params):
        return contextlib.nullcontext()


class DDPEngine(TrainingEngine):
    """Plain data parallel: torch DDP (via Ray Train) + torch AdamW + LambdaLR + clipping."""

    def wrap(self, model, total_steps):
        import ray.train.torch

        if self.precision == "fp16":
            raise ValueError("fp16 training needs DeepSpeed (train.deepspeed.enabled: true)")
        self.module = model
        self.model = ray.train.torch.prepare_model(model, parallel_strategy="ddp")
        self.device = next(model.parameters()).device
        self.optimizer = build_optimizer(
            model.parameters(), self.cfg.train.optimizer, fused=self.device.type == "cuda"
        )
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train.schedule, total_steps)
        self.accum = self.cfg.train.gradient_accumulation_steps
        self.micro = 0
        self._grad_norm = None

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss):
        """DDP averages gradients over the workers: scale the share back up by the world."""
        boundary = (self.micro + 1) % self.accum == 0
        sync = (
            contextlib.nullcontext()
            if boundary
            else getattr(self.model, "no_sync", contextlib.nullcontext)()
        )
        with sync:
            (loss * self.world).backward()

    def step(self):
        self.micro += 1
        if self.micro % self.accum:
            return False
        max_norm = self.cfg.train.max_grad_norm
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        self._grad_norm = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    @property
    def lr(self):
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def grad_norm(self):
        return self._grad_norm

    def _module_state(self):
        if self.strategy.checkpoint_frozen:
            return self.module.state_dict()
        keep = {n for n, p in self.module.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.module.state_dict().items() if k in keep}

    def save(self, path, rank):
        if rank == 0:
            state = {
                "module": self._module_state(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "micro": self.micro,
            }
            torch.save(state, path / "ddp_state.pt")

    def load(self, path):
        state = torch.load(path / "ddp_state.pt", map_location=self.device, weights_only=False)
        self.module.load_state_dict(state["module"], strict=self.strategy.checkpoint_frozen)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro = state["micro"]

    def checkpoint_files(self, listing, rank, world):
        return [f for f in listing if f == "ddp_state.pt"]


def skip_inference_comm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its CPU shared-memory all-reduce op.

    On CPU, DeepSpeed's communication backend builds (C++ compile, about a minute on two
    cores when not cached, a few seconds to load when cached) an op that only its inference
    tensor-parallel path (`inference_all_reduce`) uses; without it that path falls back to
    `torch.distributed.all_reduce`. Training collectives are torch.distributed's either way,
    so the training run is the same without the op.
    """
    import importlib

    try:  # `deepspeed.comm.torch` is shadowed by torch itself as an attribute of the package
        ds_torch = importlib.import_module("deepspeed.comm.torch")
    except ImportError:
        return
    if hasattr(ds_torch, "build_shm_op"):
        ds_torch.build_shm_op = lambda: None


def model_hidden_size(model_path: str) -> int | None:
    """The model's hidden size from its config (sizes DeepSpeed's buckets), if it has one."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    return getattr(config.get_text_config(), "hidden_size", None)


class DeepSpeedEngine(TrainingEngine):
    """DeepSpeed ZeRO: the config dict is generated (+ user JSON), the schedule is torch's."""

    TAG = "deepspeed"

    def __init__(self, cfg, strategy, precision, world):
        super().__init__(cfg, strategy, precision, world)
        on_gpu = cfg.resources.use_gpu and torch.cuda.is_available()
        hidden = model_hidden_size(strategy.model_path) if on_gpu else None
        self.ds_config = build_deepspeed_config(cfg.train, world, precision, on_gpu, hidden)
        self.stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self._hf_ds_config = None

    @property
    def load_dtype(self):
        return DTYPES[self.precision]

    def model_init_context(self):
        if self.stage == 3:
            # Keeps ZeRO-3 alive for from_pretrained: weights are partitioned as they load
            # (zero.Init), which needs DeepSpeed's view of the process group Ray Train made.
            import deepspeed
            from transformers.integrations import HfDeepSpeedConfig

            skip_inference_comm_op()
            deepspeed.init_distributed()
            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        return contextlib.nullcontext()

    def wrap(self, model, total_steps):
        import deepspeed

        skip_inference_comm_op()
        self.module = model
        scheduler = None
        if "scheduler" not in self.ds_config:
            factor = lr_lambda(self.cfg.train.schedule, total_steps)

            def scheduler(optimizer):
                return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.ds_config,
            lr_scheduler=scheduler,
        )
        self.device = self.engine.device
        self.model = self.engine

    def backward(self, loss):
        """DeepSpeed averages gradients over the workers (and, unless told not to, divides
        the loss by the accumulation steps): scale the share back up by the world only."""
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def step(self):
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return boundary

    @property
    def lr(self):
        return float(self.engine.get_lr()[0])

    @property
    def grad_norm(self):
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def save(self, path, rank):
        self.engine.save_checkpoint(
            str(path),
            tag=self.TAG,
            exclude_frozen_parameters=not self.strategy.checkpoint_frozen,
        )

    def load(self, path):
        loaded, _ = self.engine.load_checkpoint(
            str(path), tag=self.TAG, load_module_strict=self.strategy.checkpoint_frozen
        )
        if loaded is None:
            raise RuntimeError(f"no DeepSpeed checkpoint under {path}")

    def checkpoint_files(self, listing, rank, world):
        """`latest` and, under the tag, the model states every rank reads (ZeRO 0-2:
        `mp_rank_00_model_states.pt`) and this rank's ZeRO files (`zero_pp_rank_<rank>_...`:
        optimiser partition, and under ZeRO-3 its model-state partition). With
        `elastic_checkpoint` (ZeRO 1-2) DeepSpeed reads every rank's optimiser partition."""
        zero = self.ds_config.get("zero_optimization", {})
        elastic = zero.get("elastic_checkpoint") and self.stage in (1, 2)
        ranks = r"\d+" if elastic else str(rank)
        wanted = re.compile(
            r"mp_rank_\d+_model_states\.pt"
            rf"|(bf16_)?zero_pp_rank_{rank}_mp_rank_\d+_?model_states\.pt"
            rf"|(bf16_)?zero_pp_rank_{ranks}_mp_rank_\d+_?optim_states\.pt"
        )
        prefix = f"{self.TAG}/"
        return [
            rel
            for rel in listing
            if rel == "latest"
            or (rel.startswith(prefix) and wanted.fullmatch(rel.removeprefix(prefix)))
        ]

    def gathered(self, params):
        if self.stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def build_engine(
    cfg: ExperimentConfig, strategy: Strategy, precision: str, world: int
) -> TrainingEngine:
    cls = DeepSpeedEngine if cfg.train.deepspeed.enabled else DDPEngine
    return cls(cfg, strategy, precision, world)
