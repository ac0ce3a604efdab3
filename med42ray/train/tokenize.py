"""Chat rows -> token ids and labels, with the loss on assistant tokens only.

The tokenizer's chat template renders the conversation; its ``{% generation %}`` markers make
``apply_chat_template(..., return_assistant_tokens_mask=True)`` return ``assistant_masks``, and
every other token gets the label ``IGNORE_INDEX`` (-100). Labels are *not* shifted: the model
shifts them, as Hugging Face causal LMs do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


@dataclass
class Sample:
    """One tokenised conversation."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def normalize_messages(messages: Any) -> list[dict[str, str]]:
    """Plain `[{role, content}]` from a row's `messages` (lists, numpy or Arrow rows)."""
    out = []
    for message in messages:
        role, content = str(message["role"]), message["content"]
        if role not in ROLES:
            raise ValueError(f"unknown chat role {role!r}; expected one of {ROLES}")
        out.append({"role": role, "content": "" if content is None else str(content)})
    return out


def tokenize_chat(tokenizer, messages: Any, max_seq_len: int) -> Sample:
    """Render `messages` with the chat template; labels are -100 off the assistant tokens.

    Conversations longer than `max_seq_len` are cut at `max_seq_len` (``truncated`` is set).
    """
    encoded = tokenizer.apply_chat_template(
        normalize_messages(messages),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(encoded["input_ids"])
    mask = list(encoded["assistant_masks"])
    if len(mask) != len(ids):
        raise ValueError("the chat template's assistant mask does not match its tokens")
    if not any(mask):
        raise ValueError(
            "the chat template marks no assistant tokens: it needs {% generation %} markers "
            "(set model.chat_template) and the conversation needs an assistant turn"
        )
    labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(ids, mask, strict=True)]
    truncated = len(ids) > max_seq_len
    return Sample(ids[:max_seq_len], labels[:max_seq_len], truncated)
