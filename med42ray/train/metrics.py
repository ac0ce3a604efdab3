"""Step metrics: throughput, peak memory and (GPU only) model FLOPs utilisation."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

#: Dense peak FLOP/s per GPU (no sparsity), by a substring of the device name, most specific
#: first: 16-bit tensor-core math (bf16/fp16) and plain fp32 (fp32 training, TF32 off).
PEAK_FLOPS = {
    "H100 PCIe": {"16": 756e12, "fp32": 51e12},
    "H200": {"16": 989e12, "fp32": 67e12},
    "H100": {"16": 989e12, "fp32": 67e12},
    "B200": {"16": 2250e12, "fp32": 80e12},
    "A100": {"16": 312e12, "fp32": 19.5e12},
    "L40S": {"16": 362e12, "fp32": 91.6e12},
    "A10G": {"16": 125e12, "fp32": 31.2e12},
    "L4": {"16": 121e12, "fp32": 30.3e12},
    "V100": {"16": 125e12, "fp32": 15.7e12},
}


def peak_memory_mb(use_gpu: bool) -> float:
    """GPU: `torch.cuda.max_memory_allocated`; CPU: this process's peak RSS."""
    if use_gpu:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB else


def device_peak_flops(name: str, precision: str) -> float | None:
    """The dense peak FLOP/s of the GPU called `name` at `precision` (None: not in the table)."""
    kind = "fp32" if precision == "fp32" else "16"
    return next((v[kind] for k, v in PEAK_FLOPS.items() if k in name), None)


def peak_flops(use_gpu: bool, precision: str = "bf16") -> float | None:
    if not use_gpu:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return device_peak_flops(torch.cuda.get_device_name(), precision)


@dataclass(frozen=True)
class ModelFlops:
    """Model FLOPs of a training step, counted on non-padding tokens (the MFU numerator).

    Per token: forward 2N, backward 2N for the activation gradients plus 2N for the weight
    gradients of what trains, so 6N for full fine-tuning and 4N + 2·N_trainable for LoRA,
    where N leaves out the input embedding (a lookup, unless tied to the output layer).
    Attention adds, per sample of length s, 6·L·d·s² (causal: half of QKᵀ and of AV, forward
    plus twice that backward); packed samples attend only to themselves, so it is summed
    per sample, not per row. The output layer counts only on the positions it runs on (our
    loop: the label positions, `engines.trained_positions`). Recomputation under activation
    checkpointing is not counted (that would be hardware FLOPs, not model FLOPs).
    """

    matmul_params: int
    trainable_params: int  # those of them that train
    layers: int
    attention_width: int
    output_params: int = 0  # the output layer's (its matmul runs on `head_tokens` only)
    output_trains: bool = False

    @classmethod
    def of(cls, model, trainable_params: int) -> ModelFlops:
        from med42ray.train.strategies import param_numel

        config = model.config.get_text_config()
        total = sum(param_numel(p) for p in model.parameters())
        embedding = model.get_input_embeddings().weight
        output = model.get_output_embeddings()
        tied = output is not None and output.weight is embedding
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        lookup = 0 if tied else param_numel(embedding)  # no matmul: neither forward nor grad
        return cls(
            matmul_params=total - lookup,
            trainable_params=trainable_params - (lookup if embedding.requires_grad else 0),
            layers=config.num_hidden_layers,
            attention_width=heads * head_dim,
            output_params=0 if output is None else param_numel(output.weight),
            output_trains=output is not None and output.weight.requires_grad,
        )

    def step_flops(
        self, tokens: float, attention_pairs: float, head_tokens: float | None = None
    ) -> float:
        """FLOPs of a step over `tokens` non-padding tokens whose samples' squared lengths
        sum to `attention_pairs`, the output layer run on `head_tokens` of them (all if
        None)."""
        dense = (4 * self.matmul_params + 2 * self.trainable_params) * tokens
        if head_tokens is not None:
            skipped = (4 + 2 * self.output_trains) * self.output_params
            dense -= skipped * (tokens - head_tokens)
        return dense + 6 * self.layers * self.attention_width * attention_pairs


def mfu(flops_per_s_per_device: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s per device over the device's peak."""
    if not peak:
        return None
    return flops_per_s_per_device / peak
