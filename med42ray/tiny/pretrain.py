"""Short causal-LM pre-training of the embedded tiny model, in process, with plain torch.

A random-init tiny Llama knows nothing, so fine-tuning it shows nothing. The tiny build can
therefore pre-train it briefly on documents about made-up subjects (``data/tiny/pretrain``,
rendered by ``scripts/make_tiny_data.py``): the language of the fine-tuning corpora and the
raw-text exam formats the benchmarks use, but no real fact. Fine-tuning then has the facts to
add, and LoRA has a base that already speaks the templates.

Plain causal LM: every document is rendered (chat records through the tokenizer's chat
template, text records as is), wrapped in ``<s> ... </s>``, the documents are concatenated in
a seeded order and cut into ``seq_len`` windows, and the loss is on every token. One process,
no Ray; seeded, so the same recipe gives the same weights on the same machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from med42ray.config import TinyPretrainConfig

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
PRETRAIN_REVISION = 1  # bump when the pre-training code changes what it trains


def resolve_data(path: str) -> Path:
    """The pre-training file: absolute, else relative to the working directory or the repo."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return REPO / candidate


def data_digest(path: str) -> str:
    """sha256 of the pre-training file (part of the tiny model's cache key)."""
    return hashlib.sha256(resolve_data(path).read_bytes()).hexdigest()


def read_documents(path: str) -> list[dict[str, Any]]:
    """The JSONL records: `{"text": ...}` or `{"messages": [{role, content}, ...]}`."""
    docs = []
    for n, line in enumerate(resolve_data(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if not isinstance(rec, dict) or not ("text" in rec or "messages" in rec):
            raise ValueError(f"{path}:{n}: expected a `text` or `messages` record")
        docs.append(rec)
    if not docs:
        raise ValueError(f"{path}: no pre-training documents")
    return docs


def encode_documents(tokenizer: PreTrainedTokenizerBase, docs: list[dict]) -> list[list[int]]:
    """Token ids of each document, `<s>` first and `</s>` last."""
    out = []
    for doc in docs:
        if "messages" in doc:
            text = tokenizer.apply_chat_template(doc["messages"], tokenize=False).rstrip("\n")
        else:
            text = doc["text"]
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids or ids[-1] != tokenizer.eos_token_id:
            ids.append(tokenizer.eos_token_id)
        out.append([tokenizer.bos_token_id, *ids])
    return out


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: TinyPretrainConfig,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[float]:
    """Train `model` in place for `spec.steps` steps; return the loss of every step."""
    import torch

    say = progress or log.info
    docs = encode_documents(tokenizer, read_documents(spec.data))
    generator = torch.Generator().manual_seed(seed)
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)

    def windows() -> torch.Tensor:
        """One pass over the documents in a fresh seeded order, cut into windows."""
        order = torch.randperm(len(docs), generator=generator).tolist()
        flat = [t for i in order for t in docs[i]]
        n = len(flat) // spec.seq_len
        return torch.tensor(flat[: n * spec.seq_len]).view(n, spec.seq_len)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, int(spec.steps * spec.warmup_ratio))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, spec.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    n_tokens = sum(len(d) for d in docs)
    say(
        f"pretraining the tiny model: {len(docs)} documents, {n_tokens} tokens, "
        f"{spec.steps} steps of {spec.batch_size}x{spec.seq_len} tokens"
    )
    model.train()
    losses: list[float] = []
    data, cursor, epoch = windows(), 0, 0
    start = time.monotonic()
    every = max(1, spec.steps // 10)
    try:
        for step in range(spec.steps):
            if cursor + spec.batch_size > len(data):
                data, cursor, epoch = windows(), 0, epoch + 1
            batch = data[cursor : cursor + spec.batch_size]
            cursor += spec.batch_size
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if (step + 1) % every == 0 or step == 0:
                recent = losses[-every:]
                say(
                    f"pretrain step {step + 1}/{spec.steps} epoch {epoch} "
                    f"loss {sum(recent) / len(recent):.3f} ({time.monotonic() - start:.0f}s)"
                )
    finally:
        torch.random.set_rng_state(rng_state)
    model.eval()
    return losses
