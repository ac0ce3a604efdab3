"""Fine-tuning strategies: what trains and how it is saved.

A strategy builds the model (full: the causal LM as loaded; LoRA: the PEFT-wrapped model with a
frozen base), names the parameters a checkpoint must hold, and writes the export. The training
loop never asks which strategy it runs.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from med42ray.config import ExperimentConfig, LoraConfig
from med42ray.models import load_model
from med42ray.train.attention import register_varlen_sdpa

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def param_numel(param) -> int:
    """Elements of a parameter, also when ZeRO-3 has partitioned it away (`ds_numel`)."""
    return int(getattr(param, "ds_numel", param.numel()))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    trainable = sum(param_numel(p) for p in params if p.requires_grad)
    return trainable, sum(param_numel(p) for p in params)


def lora_parameter_count(model_config, lora: LoraConfig) -> int:
    """LoRA's trainable parameters from the architecture alone: r * (in + out) per target.

    Covers the Llama projections (q/k/v/o, gate/up/down); bias-free, as LoRA's A and B are.
    """
    h = model_config.hidden_size
    inter = model_config.intermediate_size
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or h // heads
    kv = (model_config.num_key_value_heads or heads) * head_dim
    shapes = {
        "q_proj": (h, heads * head_dim),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (heads * head_dim, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    unknown = sorted(set(lora.target_modules) - set(shapes))
    if unknown:
        raise ValueError(f"no analytical LoRA count for modules {unknown}")
    per_layer = sum(lora.r * sum(shapes[name]) for name in lora.target_modules)
    return per_layer * model_config.num_hidden_layers


def use_liger(setting: bool | str, use_gpu: bool) -> bool:
    """Whether to patch the model with Liger kernels (`model.liger_kernel`): they are Triton
    (CUDA) kernels, so never without a GPU; `auto` also needs `liger-kernel` installed."""
    import importlib.util

    import torch

    cuda = use_gpu and torch.cuda.is_available()
    installed = importlib.util.find_spec("liger_kernel") is not None
    if setting is True and not (cuda and installed):
        missing = "a CUDA GPU" if not cuda else "liger-kernel (pip install 'med42ray[gpu]')"
        raise RuntimeError(f"model.liger_kernel: true needs {missing}")
    if setting == "auto" and cuda and not installed:
        log.warning("liger-kernel is not installed: training without its fused kernels")
    return bool(setting) and cuda and installed


class Strategy(ABC):
    """How the model is built, which parameters train, and how it is saved."""

    name: str
    #: checkpoints skip frozen weights (they are re-read from the base model on resume)
    checkpoint_frozen: bool = True

    def __init__(self, cfg: ExperimentConfig, model_path: str):
        self.cfg = cfg
        self.model_path = model_path

    def build_model(self, dtype: torch.dtype, use_gpu: bool) -> torch.nn.Module:
        dtype_name = str(dtype).removeprefix("torch.")
        update = {"dtype": dtype_name}
        if self.cfg.model.attn_implementation is None and self.cfg.train.packing:
            update["attn_implementation"] = register_varlen_sdpa()
        model_cfg = self.cfg.model.model_copy(update=update)
        model = load_model(model_cfg, self.model_path, use_gpu=use_gpu)
        model.config.use_cache = False
        if use_liger(self.cfg.model.liger_kernel, use_gpu):
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=model)
        if self.cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return self.adapt(model)

    @abstractmethod
    def adapt(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap the loaded model and set `requires_grad` on what trains."""

    def export_parameter_names(self, model: torch.nn.Module) -> list[str]:
        """Parameters the export needs (gathered from all ranks under ZeRO-3)."""
        return [name for name, _ in model.named_parameters()]

    @abstractmethod
    def export(
        self, model: torch.nn.Module, state_dict: dict[str, Any], out: Path, tokenizer
    ) -> dict[str, str]:
        """Write the Hugging Face folder(s) under `out`; return {kind: relative path}."""


class FullStrategy(Strategy):
    """Full-parameter fine-tuning: every weight trains; export is the whole causal LM."""

    name = "full"

    def adapt(self, model):
        model.requires_grad_(True)
        return model

    def export(self, model, state_dict, out, tokenizer):
        target = out / "model"
        model.save_pretrained(target, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(target)
        return {"model": "model"}


class LoraStrategy(Strategy):
    """LoRA: PEFT adapters on the target projections, base frozen; export is the adapter.

    Only the adapter is exported here: `lora.merge_on_export` is done after training in a Ray
    task of its own (`med42ray.train.merge`), never under a worker's live ZeRO-3 context.
    """

    name = "lora"
    checkpoint_frozen = False

    def peft_config(self):
        from peft import LoraConfig as PeftLoraConfig

        lora = self.cfg.train.lora
        return PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )

    def adapt(self, model):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())

    def export_parameter_names(self, model):
        return [name for name, p in model.named_parameters() if p.requires_grad]

    def export(self, model, state_dict, out, tokenizer):
        adapter = out / "adapter"
        if self.cfg.model.name_or_path != "tiny":
            # the base as users name it (hub id), not this node's resolved cache folder, so
            # AutoPeftModelForCausalLM works on any machine
            for peft_cfg in model.peft_config.values():
                peft_cfg.base_model_name_or_path = self.cfg.model.name_or_path
                peft_cfg.revision = self.cfg.model.revision
        model.save_pretrained(adapter, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(adapter)
        return {"adapter": "adapter"}


STRATEGIES: dict[str, type[Strategy]] = {"full": FullStrategy, "lora": LoraStrategy}


def build_strategy(cfg: ExperimentConfig, model_path: str) -> Strategy:
    return STRATEGIES[cfg.train.strategy](cfg, model_path)
