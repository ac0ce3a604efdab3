"""Step metrics: throughput, peak memory and (GPU only) model FLOPs utilisation."""

from __future__ import annotations

import resource
import sys

# Dense bf16 peak FLOP/s per GPU (no sparsity), by a substring of the device name.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,
}


def peak_memory_mb(use_gpu: bool) -> float:
    """GPU: `torch.cuda.max_memory_allocated`; CPU: this process's peak RSS."""
    if use_gpu:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB else


def peak_flops(use_gpu: bool) -> float | None:
    if not use_gpu:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def mfu(num_params: int, tokens_per_s_per_device: float, flops: float | None) -> float | None:
    """6·N·tokens/s over the device's peak (attention FLOPs left out: a lower bound)."""
    if not flops:
        return None
    return 6.0 * num_params * tokens_per_s_per_device / flops
