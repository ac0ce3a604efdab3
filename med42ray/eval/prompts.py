"""Prompts as lm-evaluation-harness builds them, from the task YAMLs.

A :class:`PromptFormat` renders one item's context (the text the model conditions on) and its
continuations (what is scored: ``target_delimiter + choice``), zero- or k-shot, with or without
the model's chat template. Its :attr:`PromptFormat.version` hashes everything that shapes the text
(templates, delimiters, shots, seed, chat template), so a results row names the exact format.

lm-eval's layout, which we keep character for character (golden tests compare with its own
``doc_to_text`` functions and YAML templates)::

    description + shot_1 + "\\n\\n" + ... + shot_k + "\\n\\n" + doc_to_text(item)
    shot = doc_to_text(shot_item) + target_delimiter + gold choice

Few-shot examples come from the task's ``fewshot_split``: the first k for ``first_n`` tasks (MMLU,
as lm-eval), otherwise a seeded sample drawn per item (seed + item id, so a resumed run draws
the same shots as an uninterrupted one; lm-eval draws from one generator in document order).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jinja2

from med42ray.benchmarks import BenchmarkError, BenchmarkItem, TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROMPT_FORMAT_REVISION = 1  # bump when the rendering code changes


@functools.cache
def _template(source: str) -> jinja2.Template:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(source)


def render_text(spec: TaskSpec, item: BenchmarkItem) -> str:
    """The task's ``doc_to_text`` for one item (no description, no shots)."""
    return _template(spec.doc_to_text).render(**item.template_vars())


def choice_strings(spec: TaskSpec, item: BenchmarkItem) -> list[str]:
    """``doc_to_choice``: the option labels (`A`..) or the option texts."""
    return list(item.labels if spec.doc_to_choice == "labels" else item.choices)


def continuations(spec: TaskSpec, item: BenchmarkItem) -> list[str]:
    """What is scored after the context: ``target_delimiter + choice``, one per option."""
    return [spec.target_delimiter + c for c in choice_strings(spec, item)]


@dataclass(frozen=True)
class Prompt:
    """One rendered item: the context, the scored continuations and the choice strings."""

    context: str
    continuations: tuple[str, ...]
    choices: tuple[str, ...]

    @property
    def hash(self) -> str:
        blob = json.dumps([self.context, self.continuations]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class PromptFormat:
    """How the items of one task become prompts."""

    spec: TaskSpec
    num_fewshot: int = 0
    seed: int = 1234
    use_chat_template: bool = False
    chat_template: str | None = None
    system_prompt: str | None = None
    fewshot_items: Sequence[BenchmarkItem] = field(default_factory=tuple)
    tokenizer: PreTrainedTokenizerBase | None = None

    def __post_init__(self) -> None:
        if self.num_fewshot and len(self.fewshot_items) < self.num_fewshot:
            raise BenchmarkError(
                f"{self.spec.task}: {self.num_fewshot}-shot needs {self.num_fewshot} examples "
                f"from its few-shot split ({self.spec.fewshot_split}), got "
                f"{len(self.fewshot_items)}"
            )
        if self.use_chat_template:
            if self.tokenizer is None:
                raise ValueError("use_chat_template needs the model's tokenizer")
            self.chat_template = self.chat_template or self.tokenizer.chat_template
            if not self.chat_template:
                raise ValueError("use_chat_template: the tokenizer has no chat template")

    # ------------------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        shots = f"{self.num_fewshot}shot"
        return f"{self.spec.task}:{shots}{':chat' if self.use_chat_template else ''}"

    @functools.cached_property
    def version(self) -> str:
        """Hash of every template and setting that shapes the rendered text."""
        settings: dict[str, Any] = {
            "revision": PROMPT_FORMAT_REVISION,
            "doc_to_text": self.spec.doc_to_text,
            "doc_to_choice": self.spec.doc_to_choice,
            "description": self.spec.description,
            "target_delimiter": self.spec.target_delimiter,
            "fewshot_delimiter": self.spec.fewshot_delimiter,
            "num_fewshot": self.num_fewshot,
        }
        if self.num_fewshot:
            settings.update(
                sampler=self.spec.fewshot_sampler,
                seed=self.seed,
                pool=[i.id for i in self.fewshot_items],
            )
        if self.use_chat_template:
            settings.update(chat_template=self.chat_template, system_prompt=self.system_prompt)
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    # ----------------------------------------------------------------------------- rendering
    def shots(self, item: BenchmarkItem) -> list[BenchmarkItem]:
        """The k examples shown before `item` (never `item` itself, as lm-eval)."""
        if not self.num_fewshot:
            return []
        pool = [
            s
            for s in self.fewshot_items
            if (s.question, s.choices) != (item.question, item.choices)
        ]
        if self.spec.fewshot_sampler == "first_n":
            return pool[: self.num_fewshot]
        return random.Random(f"{self.seed}:{item.id}").sample(pool, self.num_fewshot)

    def _shot_text(self, shot: BenchmarkItem) -> str:
        gold = choice_strings(self.spec, shot)[shot.gold]
        return render_text(self.spec, shot) + self.spec.target_delimiter + gold

    def context(self, item: BenchmarkItem) -> str:
        spec = self.spec
        shots = self.shots(item)
        if not self.use_chat_template:
            parts = [self._shot_text(s) for s in shots] + [render_text(spec, item)]
            return spec.description + spec.fewshot_delimiter.join(parts)
        # lm-eval's chat layout with few-shot as multi-turn: the description opens the first
        # user turn, each shot is a user turn answered by an assistant turn.
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for i, shot in enumerate(shots):
            prefix = spec.description if i == 0 else ""
            messages.append({"role": "user", "content": prefix + render_text(spec, shot)})
            gold = choice_strings(spec, shot)[shot.gold]
            messages.append({"role": "assistant", "content": gold})
        prefix = "" if shots else spec.description
        messages.append({"role": "user", "content": prefix + render_text(spec, item)})
        assert self.tokenizer is not None
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=True,
        )

    def render(self, item: BenchmarkItem) -> Prompt:
        return Prompt(
            self.context(item),
            tuple(continuations(self.spec, item)),
            tuple(choice_strings(self.spec, item)),
        )
