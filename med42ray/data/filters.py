"""Cleaning filters, written once in the datatrove shape: `check(record) -> reason | None`.

:class:`CleaningFilter` is the filter step, a Ray Data task (Ray reuses its worker processes
across tasks, so no actor has to start for it). Tokens are counted by a :class:`TokenCounter`
built once in the driver: a fast tokenizer travels as its own Rust pipeline, so the workers
count with `tokenizers` alone and never import transformers (several seconds of CPU per
process). Each removed record is marked `drop="filtered"` with its reason, so the manifest
counts `dropped_{reason}`. Reasons, in the order they are checked: `empty_turn`,
`no_assistant`, `non_text`, `language`, `too_short`, `too_long`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pyarrow as pa

from med42ray.config import FilterConfig, ModelConfig
from med42ray.data.dedup import exact_key
from med42ray.data.sources import DataError
from med42ray.data.steps import Decision, Removal, Step, live_rows
from med42ray.data.text import english_stopword_ratio, non_text_ratio, normalize

REASONS = ("empty_turn", "no_assistant", "non_text", "language", "too_short", "too_long")
SUPPORTED_LANGUAGES = ("en",)
MIN_WORDS_FOR_LANGUAGE = 8
"""Records shorter than this are not judged by the language heuristic."""
MIN_EN_STOPWORD_RATIO = 0.05


def check_languages(cfg: FilterConfig) -> None:
    """Reject languages the stopword heuristic cannot judge (no new dependencies)."""
    bad = sorted(set(cfg.languages or ()) - set(SUPPORTED_LANGUAGES))
    if bad:
        raise DataError(
            f"data.filters.languages: {bad} not supported; the language filter is an English "
            f"stopword heuristic and accepts only {list(SUPPORTED_LANGUAGES)}"
        )


def check_text(messages: list[dict[str, str]], cfg: FilterConfig) -> str | None:
    """The first cheap (token-free) reason to drop a record, or None."""
    if any(not m["content"].strip() for m in messages):
        return "empty_turn"
    if not any(m["role"] == "assistant" for m in messages):
        return "no_assistant"
    body = "\n".join(m["content"] for m in messages if m["role"] != "system")
    if non_text_ratio(body) > cfg.max_non_text_ratio:
        return "non_text"
    if cfg.languages:
        words = normalize(body).split()
        if (
            len(words) >= MIN_WORDS_FOR_LANGUAGE
            and english_stopword_ratio(words) < MIN_EN_STOPWORD_RATIO
        ):
            return "language"
    return None


def token_texts(messages: list[dict[str, str]]) -> tuple[str, str]:
    """(system text, conversation text): `too_short` counts the conversation's tokens,
    `too_long` both (what training will see)."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    return system, "\n".join(m["content"] for m in messages if m["role"] != "system")


@lru_cache(maxsize=2)
def _cached_tokenizer(model_json: str, tokenizer_path: str):
    from med42ray.models import load_tokenizer

    return load_tokenizer(ModelConfig.model_validate_json(model_json), path=tokenizer_path)


_BACKENDS: dict[tuple[str, bool], Any] = {}
"""This process's `tokenizers.Tokenizer`s, by pipeline digest (`TokenCounter.key`) and
`split_special_tokens`."""


def _backend(counter: TokenCounter):
    """The `tokenizers.Tokenizer` of `counter.pipeline`, rebuilt once per process: looked up
    by its digest, not by the (megabytes of) pipeline text each task receives anew."""
    key = (counter.key, counter.split_special_tokens)
    backend = _BACKENDS.get(key)
    if backend is None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(counter.pipeline)
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = counter.split_special_tokens
        _BACKENDS[key] = backend
    return backend


@dataclass(frozen=True, eq=False)
class TokenCounter:
    """Counts tokens exactly as `tokenizer(texts, add_special_tokens=False)` does.

    A fast tokenizer is carried as `backend_tokenizer.to_str()` (what transformers itself
    encodes with, after any of its own set-up); a tokenizer without one is loaded in each
    worker process instead, once.
    """

    model_json: str
    path: str
    pipeline: str | None = None
    key: str = ""
    split_special_tokens: bool = False

    @classmethod
    def load(cls, model_cfg: ModelConfig, tokenizer_path: str) -> TokenCounter:
        model_json = model_cfg.model_dump_json()
        tokenizer = _cached_tokenizer(model_json, tokenizer_path)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return cls(model_json, tokenizer_path)
        pipeline = backend.to_str()
        return cls(
            model_json,
            tokenizer_path,
            pipeline,
            hashlib.sha256(pipeline.encode()).hexdigest(),
            bool(getattr(tokenizer, "split_special_tokens", False)),
        )

    def __call__(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self.pipeline is None:
            tokenizer = _cached_tokenizer(self.model_json, self.path)
            enc = tokenizer(texts, add_special_tokens=False, verbose=False)
            return [len(ids) for ids in enc["input_ids"]]
        backend = _backend(self)
        return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]


class CleaningFilter(Step):
    """The cleaning filters, then the token limits (counted with `count_tokens`); a record
    that passes gets its exact-dedup key (`dkey`) for the exact-dedup step."""

    category = "filtered"

    def __init__(self, count_tokens: Callable[[list[str]], list[int]], cfg: FilterConfig):
        self.count_tokens = count_tokens
        self.cfg = cfg

    def decide(self, batch: pa.Table, live: list[int]) -> Decision:
        msgs = batch.column("messages").to_pylist()
        removed, pending = {}, []
        for i in live:
            why = check_text(msgs[i], self.cfg)
            if why:
                removed[i] = Removal(why)
            else:
                pending.append(i)
        texts = [token_texts(msgs[i]) for i in pending]
        system = self.count_tokens([t[0] for t in texts])
        body = self.count_tokens([t[1] for t in texts])
        for i, n_sys, n_body in zip(pending, system, body, strict=True):
            if n_body < self.cfg.min_tokens:
                removed[i] = Removal("too_short")
            elif n_sys + n_body > self.cfg.max_tokens:
                removed[i] = Removal("too_long")
        return removed

    def __call__(self, batch: pa.Table) -> pa.Table:
        return with_exact_keys(super().__call__(batch))

    def apply(self, ds):
        """Per-batch tasks of 256 records, between materialised datasets."""
        return (
            ds.materialize().map_batches(self, batch_format="pyarrow", batch_size=256).materialize()
        )


def with_exact_keys(batch: pa.Table) -> pa.Table:
    """`batch` with the exact-dedup key (`dedup.exact_key`) set on its live rows."""
    live = live_rows(batch)
    if not live:
        return batch
    keys = batch.column("dkey").to_pylist()
    msgs = batch.column("messages").take(live).to_pylist()
    for i, m in zip(live, msgs, strict=True):
        keys[i] = exact_key(m)
    return batch.set_column(
        batch.schema.get_field_index("dkey"), "dkey", pa.array(keys, pa.string())
    )
