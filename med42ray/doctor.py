"""`med42ray doctor`: prove the installation works before spending cluster hours.

It validates the config, starts or joins Ray, loads the configured model and tokenizer through
the normal loading path, renders one chat through the chat template, and takes one real AdamW
step on it, reporting the loss before and after. Nothing here is simulated.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from med42ray.cluster import init_ray
from med42ray.config import ExperimentConfig
from med42ray.models import load_model, load_tokenizer, resolve_model_path
from med42ray.stages import package_versions

SAMPLE_CHAT = [
    {"role": "user", "content": "What is the first-line treatment of anaphylaxis?"},
    {"role": "assistant", "content": "Intramuscular epinephrine."},
]


def one_optimizer_step(cfg: ExperimentConfig) -> dict[str, Any]:
    """Load the model, compute the loss on one chat, take one AdamW step, recompute it."""
    import torch

    path = resolve_model_path(cfg.model, cfg.resources.hub_mirror)
    tokenizer = load_tokenizer(cfg.model, path)
    model = load_model(cfg.model, path)
    batch = tokenizer.apply_chat_template(
        SAMPLE_CHAT, tokenize=True, return_dict=True, return_tensors="pt"
    )
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    loss_before = model(**inputs, labels=inputs["input_ids"]).loss
    loss_before.backward()
    optimizer.step()
    with torch.no_grad():
        loss_after = model(**inputs, labels=inputs["input_ids"]).loss
    return {
        "model": path,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens": int(inputs["input_ids"].numel()),
        "loss_before": round(loss_before.item(), 4),
        "loss_after": round(loss_after.item(), 4),
        "step_seconds": round(time.perf_counter() - start, 3),
    }


def run_doctor(cfg: ExperimentConfig, out: Path) -> dict[str, Any]:
    """Run every check and write `doctor.json` under `out`."""
    resources = init_ray(cfg.resources.ray_address)
    summary = {
        "python": platform.python_version(),
        "packages": package_versions(),
        "ray_resources": {k: v for k, v in resources.items() if not k.startswith("node:")},
        "step": one_optimizer_step(cfg),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "doctor.json").write_text(json.dumps(summary, indent=2))
    return summary
