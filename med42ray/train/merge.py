"""Merging a LoRA adapter into its base model, after training, in a process of its own.

The workers export only the adapter. Merging needs the whole base model in one process; on a
worker under ZeRO-3 `from_pretrained` would run inside the live `HfDeepSpeedConfig` (zero.Init
collectives) on rank 0 alone while the other ranks wait in a barrier: a hang. So
`run_training` merges after training in a fresh Ray task on a node with the training's
resources (`trainer.merge_lora_remote` runs `merge_and_publish`), which has no DeepSpeed
context, and records a merge check: the largest absolute logit difference between the merged
model and base + adapter (unmerged).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from med42ray import storage
from med42ray.config import ExperimentConfig
from med42ray.models import load_model, load_tokenizer, resolve_model_path

log = logging.getLogger(__name__)

MERGE_CHECK_FILE = "merge_check.json"

#: Short chats the merge check scores (chat template applied, no generation).
CHECK_CHATS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Which vitamin deficiency causes scurvy?"}],
    [{"role": "user", "content": "Name the first-line drug for anaphylaxis."}],
    [
        {"role": "user", "content": "What does HbA1c measure?"},
        {"role": "assistant", "content": "Average blood glucose over about three months."},
    ],
]

#: Largest logit difference accepted per dtype (folding B·A into W rounds differently).
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25, torch.float16: 0.05}


def check_inputs(tokenizer) -> list[dict[str, torch.Tensor]]:
    """The merge check's prompts, tokenised with the chat template."""
    return [
        tokenizer.apply_chat_template(chat, return_tensors="pt", return_dict=True)
        for chat in CHECK_CHATS
    ]


@torch.no_grad()
def logits(model, inputs: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    return [model(**batch).logits.float() for batch in inputs]


def _assert_no_zero3() -> None:
    """A live `HfDeepSpeedConfig` would make `from_pretrained` partition (and hang alone)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise RuntimeError("merge the adapter outside a ZeRO-3 context (HfDeepSpeedConfig)")


def merge_with_check(
    cfg: ExperimentConfig, base_path: str, adapter: Path, tokenizer
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(merged causal LM, merge check): base + adapter is scored, merged in place, rescored."""
    from peft import PeftModel

    _assert_no_zero3()
    base = load_model(cfg.model, base_path)
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    inputs = check_inputs(tokenizer)
    unmerged = logits(peft_model, inputs)
    merged = peft_model.merge_and_unload().eval()
    pairs = zip(unmerged, logits(merged, inputs), strict=True)
    diff = max(float((a - b).abs().max()) for a, b in pairs)
    dtype = next(merged.parameters()).dtype
    tolerance = TOLERANCE.get(dtype, 1e-3)
    check = {
        "max_abs_logit_diff": diff,
        "tolerance": tolerance,
        "ok": diff < tolerance,
        "dtype": str(dtype).removeprefix("torch."),
        "prompts": len(inputs),
        "tokens": sum(int(b["input_ids"].numel()) for b in inputs),
    }
    return merged, check


def merge_and_publish(config: dict[str, Any], adapter: str, export_to: str) -> dict[str, Any]:
    """Merge the adapter at `adapter` into the base model and publish it to `<export_to>/model`.

    Runs where it is scheduled (a Ray task): resolves the base model on this node, copies the
    adapter here (`storage.local_copy`), merges with the check, writes `checksums.json` and
    uploads. Returns {"check": merge check, "model": location, "transfers": bytes moved}.
    """
    from med42ray.train.checkpoint import publish

    before = storage.transfers()
    cfg = ExperimentConfig.model_validate(config)
    base_path = resolve_model_path(cfg.model, cfg.resources.hub_mirror)
    tokenizer = load_tokenizer(cfg.model, base_path)
    merged, check = merge_with_check(cfg, base_path, storage.local_copy(adapter), tokenizer)
    target = storage.join(export_to, "model")
    with tempfile.TemporaryDirectory(prefix="med42ray-merge-") as tmp:
        folder = Path(tmp) / "model"
        merged.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        publish(folder, target)
    if not check["ok"]:
        log.warning("merged model differs from base + adapter: %s", check)
    after = storage.transfers()
    moved = {k: after[k] - before[k] for k in after}
    return {"check": check, "model": target, "transfers": moved}
