"""Scoring protocols: how a benchmark's prompts are asked of an engine and answered.

A :class:`Scoring` is the one object that knows the mode of a protocol (its ``scoring``), shaped
like the training :class:`~med42ray.train.strategies.Strategy`: :data:`SCORINGS` maps the mode to
its class and :func:`build_scoring` makes it. Each mode answers four questions, so the runner
never asks which one it runs:

* :meth:`Scoring.requests`: the requests of one task run (their keys: :func:`request_key`);
* :meth:`Scoring.score`: the part columns (``loglikelihood``, ``generation``) of a batch of
  requests, scored by an :class:`~med42ray.eval.engines.InferenceEngine`;
* :meth:`Scoring.key_settings`: what the mode adds to the run key;
* :meth:`Scoring.predict_item`: an item's :class:`ItemPrediction` from its requests' results.

:class:`LoglikelihoodScoring` asks one request per option (lm-eval's ``multiple_choice``: the
summed log-likelihood of each continuation, ``acc`` and ``acc_norm`` argmaxes);
:class:`GenerateScoring` one per item (a greedy answer of ``eval.max_new_tokens`` tokens, a
short answer or, with the ``cot`` prompt format, reasoning ending in an answer line; the option it
names read by :func:`~med42ray.eval.parsing.parse_answer`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from med42ray.benchmarks import BenchmarkItem, TaskSpec
from med42ray.config import EvalConfig, ProtocolConfig
from med42ray.eval.metrics import predict
from med42ray.eval.parsing import cut_at_stop, parse_answer
from med42ray.eval.prompts import Prompt, PromptFormat

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

    from med42ray.eval.engines import InferenceEngine

KEY_SEP = "|"


@dataclass
class TaskRun:
    """One benchmark of the run: its spec, prompt format, items and rendered prompts."""

    spec: TaskSpec
    fmt: PromptFormat
    items: list[BenchmarkItem]
    prompts: list[Prompt]
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where the items came from: source, form, items, dropped, sha256 (the loader's)."""


@dataclass(frozen=True)
class ItemPrediction:
    """What a scoring mode makes of one item's results."""

    pred: int
    pred_norm: int
    loglikelihoods: list[float]
    generation: str | None
    parsed: bool | None


def request_key(task: str, item_id: str, option: int) -> str:
    """A request's key: ``task|item id|option`` (option ``-1``: the whole item)."""
    return KEY_SEP.join([task, item_id, str(option)])


def request(
    task: str, item_id: str, option: int, ctx: Sequence[int], cont: Sequence[int], text: str
) -> dict[str, Any]:
    """One request row: its key, the token ids to score and the text to generate from."""
    return {
        "key": request_key(task, item_id, option), "task": task, "item_id": item_id,
        "option": option, "ctx": [int(t) for t in ctx], "cont": [int(t) for t in cont],
        "text": text,
    }  # fmt: skip


class Scoring(ABC):
    """How the items of a run are asked of an engine, and how their answers are read."""

    name: str

    def __init__(self, eval_cfg: EvalConfig) -> None:
        self.eval_cfg = eval_cfg

    @abstractmethod
    def options(self, prompt: Prompt) -> list[int]:
        """The option of each request an item makes (``-1``: one request for the whole item)."""

    def item_keys(self, task: str, item: BenchmarkItem, prompt: Prompt) -> list[str]:
        """The keys of an item's requests, in option order."""
        return [request_key(task, item.id, j) for j in self.options(prompt)]

    @abstractmethod
    def requests(self, run: TaskRun, tokenizer: PreTrainedTokenizerBase) -> list[dict[str, Any]]:
        """The requests of one task run, item by item."""

    @abstractmethod
    def score(self, engine: InferenceEngine, batch: dict[str, Any]) -> dict[str, list[Any]]:
        """The ``loglikelihood`` and ``generation`` part columns of a batch of requests."""

    def key_settings(self) -> dict[str, Any]:
        """What this mode adds to the run key (every mode names the same fields)."""
        return {"scoring": self.name, "max_new_tokens": None}

    @abstractmethod
    def predict_item(
        self, item: BenchmarkItem, prompt: Prompt, results: pd.DataFrame
    ) -> ItemPrediction:
        """The prediction for `item` from its requests' rows of the parts, in key order."""


class LoglikelihoodScoring(Scoring):
    """One request per option: the continuation's summed log-likelihood given the context."""

    name = "loglikelihood"

    def options(self, prompt: Prompt) -> list[int]:
        return list(range(len(prompt.continuations)))

    def requests(self, run: TaskRun, tokenizer: PreTrainedTokenizerBase) -> list[dict[str, Any]]:
        from med42ray.eval.engines import encode_pairs

        task = run.spec.task
        pairs, owners = [], []
        for item, prompt in zip(run.items, run.prompts, strict=True):
            for j, cont in enumerate(prompt.continuations):
                pairs.append((prompt.context, cont))
                owners.append((item.id, j))
        encoded = encode_pairs(tokenizer, pairs)
        return [
            request(task, item_id, j, ctx, cont, "")
            for (item_id, j), (ctx, cont) in zip(owners, encoded, strict=True)
        ]

    def score(self, engine: InferenceEngine, batch: dict[str, Any]) -> dict[str, list[Any]]:
        pairs = [
            ([int(t) for t in c], [int(t) for t in k])
            for c, k in zip(batch["ctx"], batch["cont"], strict=True)
        ]
        lls = engine.loglikelihood_tokens(pairs)
        return {"loglikelihood": lls, "generation": [""] * len(batch["key"])}

    def predict_item(
        self, item: BenchmarkItem, prompt: Prompt, results: pd.DataFrame
    ) -> ItemPrediction:
        lls = [float(x) for x in results["loglikelihood"]]
        pred, pred_norm = predict(lls, prompt.choices)
        return ItemPrediction(pred, pred_norm, lls, generation=None, parsed=None)


class GenerateScoring(Scoring):
    """One request per item: a greedy answer, and the option it names."""

    name = "generate"

    def options(self, prompt: Prompt) -> list[int]:
        return [-1]

    def requests(self, run: TaskRun, tokenizer: PreTrainedTokenizerBase) -> list[dict[str, Any]]:
        task = run.spec.task
        return [
            request(task, item.id, -1, [], [], prompt.context)
            for item, prompt in zip(run.items, run.prompts, strict=True)
        ]

    def score(self, engine: InferenceEngine, batch: dict[str, Any]) -> dict[str, list[Any]]:
        texts = engine.generate([str(t) for t in batch["text"]], self.eval_cfg.max_new_tokens)
        return {"loglikelihood": [math.nan] * len(batch["key"]), "generation": texts}

    def key_settings(self) -> dict[str, Any]:
        return {**super().key_settings(), "max_new_tokens": self.eval_cfg.max_new_tokens}

    def predict_item(
        self, item: BenchmarkItem, prompt: Prompt, results: pd.DataFrame
    ) -> ItemPrediction:
        generation = cut_at_stop(str(results["generation"].iloc[0]))  # lm-eval's `until`
        found = parse_answer(generation, item.labels, item.choices)
        pred = -1 if found is None else found
        return ItemPrediction(pred, pred, [], generation=generation, parsed=found is not None)


SCORINGS: dict[str, type[Scoring]] = {
    "loglikelihood": LoglikelihoodScoring,
    "generate": GenerateScoring,
}


def build_scoring(eval_cfg: EvalConfig, protocol: ProtocolConfig) -> Scoring:
    """The scoring mode `protocol` names (one of ``eval.resolved_protocols()``)."""
    return SCORINGS[protocol.scoring](eval_cfg)
