"""Merging a LoRA adapter into its base model, in the driver after training.

The workers export only the adapter. Merging needs the whole base model in one process; on a
worker under ZeRO-3 `from_pretrained` would run inside the live `HfDeepSpeedConfig` (zero.Init
collectives) on rank 0 alone while the other ranks wait in a barrier: a hang. The driver has no
DeepSpeed context, so `run_training` merges there (`merge_export`) and records a merge check:
the largest absolute logit difference between the merged model and base + adapter (unmerged).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from med42ray.config import ExperimentConfig
from med42ray.models import load_model, load_tokenizer

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


def merge_export(
    cfg: ExperimentConfig, base_path: str, adapter: Path, out: Path
) -> tuple[Path, dict[str, Any]]:
    """Write base + adapter merged to `out/model` and the check to `out/merge_check.json`."""
    tokenizer = load_tokenizer(cfg.model, base_path)
    merged, check = merge_with_check(cfg, base_path, adapter, tokenizer)
    target = Path(out) / "model"
    merged.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (Path(out) / MERGE_CHECK_FILE).write_text(json.dumps(check, indent=2))
    if not check["ok"]:
        log.warning("merged model differs from base + adapter: %s", check)
    return target, check
