"""Prompts as lm-evaluation-harness builds them, from the task YAMLs.

A :class:`PromptFormat` renders one item's context (the text the model conditions on) and its
continuations (what is scored: ``target_delimiter + choice``), zero- or k-shot, with or without
the model's chat template. Its :attr:`PromptFormat.version` hashes everything that shapes the text
(templates, delimiters, shots, seed, chat template), so a results row names the exact format.

lm-eval's layout (0.4.13, ``ConfigurableTask.fewshot_context``), which we keep character for
character (golden tests compare with its own tasks: ``tests/test_eval_prompts.py`` zero-shot,
``tests/test_eval_fewshot.py`` k-shot)::

    description + shot_1 + fewshot_delimiter + ... + shot_k + fewshot_delimiter + doc_to_text(item)
    shot = doc_to_text(shot_item) + target_delimiter + gold choice

Few-shot examples come from the task's ``fewshot_split`` (lm-eval's own YAMLs for MedQA, MedMCQA,
PubMedQA and HeadQA name none and fall back to ``training_split``, ``train``; MMLU names ``dev``),
the whole split in its order (the runner's ``fewshot_items``), drawn as lm-eval's samplers draw
them (PubMedQA's pool is not lm-eval's: its ``train`` is BigBio's fold 0, 450 of the 500 labelled
items outside the test fold; ours is all 500, so its k-shot prompts differ from lm-eval's):

- ``first_n`` (MMLU): the first k examples of the split, for every item.
- ``random`` (lm-eval's ``default`` ``ContextSampler``): ONE ``random.Random(seed)`` per task
  (lm-eval's ``task.set_fewshot_seed(fewshot_random_seed)``, default 1234), from which every
  item, in the order it is first rendered, takes ``rnd.sample(pool, k)``. The shots of an item
  thus depend on the items rendered before it: rendering a task's items in document order (as
  :func:`med42ray.eval.runner.prepare_tasks` does) reproduces lm-eval's prompts exactly, a
  prefix of them (``limit``, lm-eval's ``--limit``) gets the same shots as the whole run, and
  another subset or order gets other shots (as lm-eval's ``--samples`` or data-parallel ranks
  do). An item rendered again keeps the shots it drew first.
- Only when the few-shot split is the test split is the item itself left out (random: k + 1
  drawn, the item dropped, as lm-eval's ``rm_eval_doc``; first_n: the first k others).

With the chat template, lm-eval's multi-turn layout (``--apply_chat_template``, which turns on
``fewshot_as_multiturn``): a system turn holding the system prompt and the description (joined
by the few-shot delimiter), one user/assistant pair per shot, the item as the last user turn; a
template that rejects the system role is retried without it, as lm-eval's HF backend does; the
scored continuations then lack the target delimiter (``"A"`` after the assistant tag).

Which prompt a protocol renders (``eval.prompt_format``) is a :class:`TaskFormat` from
:data:`TASK_FORMATS`: the task YAML as it is, its cloze formulation, or zero-shot chain of
thought (:data:`COT_TEXT`), each a :class:`~med42ray.benchmarks.TaskSpec` the same
:class:`PromptFormat` renders.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import jinja2

from med42ray.benchmarks import BenchmarkError, BenchmarkItem, TaskSpec, cloze_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROMPT_FORMAT_REVISION = 2  # bump when the rendering code changes (2: lm-eval's few-shot stream)


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


def _joined(prefix: str | None, suffix: str | None, delimiter: str) -> str:
    """lm-eval's ``maybe_delimit``: the delimiter only where neither side has whitespace."""
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    if prefix[-1].isspace() or suffix[0].isspace():
        return prefix + suffix
    return prefix + delimiter + suffix


@dataclass
class PromptFormat:
    """How the items of one task become prompts (few-shot: one seeded stream, see the module)."""

    spec: TaskSpec
    num_fewshot: int = 0
    seed: int = 1234
    use_chat_template: bool = False
    chat_template: str | None = None
    system_prompt: str | None = None
    fewshot_items: Sequence[BenchmarkItem] = field(default_factory=tuple)
    tokenizer: PreTrainedTokenizerBase | None = None
    _rnd: random.Random = field(init=False, repr=False, compare=False)
    _drawn: dict[BenchmarkItem, tuple[BenchmarkItem, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        needed = self.num_fewshot
        if self._excludes_item:  # the item itself is in the pool, and never shown
            needed += 1
        if self.num_fewshot and len(self.fewshot_items) < needed:
            raise BenchmarkError(
                f"{self.spec.task}: {self.num_fewshot}-shot needs {needed} examples "
                f"from its few-shot split ({self.spec.fewshot_split}), got "
                f"{len(self.fewshot_items)}"
            )
        self.fewshot_items = tuple(self.fewshot_items)
        self._rnd = random.Random(self.seed)  # lm-eval: task.set_fewshot_seed(seed)
        if self.use_chat_template:
            if self.tokenizer is None:
                raise ValueError("use_chat_template needs the model's tokenizer")
            self.chat_template = self.chat_template or self.tokenizer.chat_template
            if not self.chat_template:
                raise ValueError("use_chat_template: the tokenizer has no chat template")

    @property
    def _excludes_item(self) -> bool:
        """lm-eval drops the item from its shots only when they come from the test split."""
        return self.spec.fewshot_split == self.spec.test_split

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
        """The k examples shown before `item`: drawn once, in first-rendered order (module doc)."""
        if not self.num_fewshot:
            return []
        if item not in self._drawn:
            self._drawn[item] = tuple(self._draw(item))
        return list(self._drawn[item])

    def _draw(self, item: BenchmarkItem) -> list[BenchmarkItem]:
        """lm-eval's ``FirstNSampler`` / ``ContextSampler.sample`` for one item, step for step
        (``random.sample`` picks by position, so the pool's order and size must be lm-eval's)."""
        k, pool = self.num_fewshot, self.fewshot_items  # a tuple: sampled as lm-eval's list
        if self.spec.fewshot_sampler == "first_n":
            return [s for s in pool if s != item][:k] if self._excludes_item else list(pool[:k])
        if not self._excludes_item:
            return self._rnd.sample(pool, k)
        shots = [s for s in self._rnd.sample(pool, k + 1) if s != item][:k]
        if len(shots) < k:  # the item is in the pool more than once: lm-eval resamples
            shots = self._rnd.sample([s for s in pool if s != item], k)
        return shots

    def _gold(self, shot: BenchmarkItem) -> str:
        return choice_strings(self.spec, shot)[shot.gold]

    def _shot_text(self, shot: BenchmarkItem) -> str:
        return render_text(self.spec, shot) + self.spec.target_delimiter + self._gold(shot)

    def context(self, item: BenchmarkItem) -> str:
        """The text the model conditions on (module doc: lm-eval's layout, plain or chat)."""
        spec = self.spec
        shots = self.shots(item)
        system = _joined(self.system_prompt, spec.description, spec.fewshot_delimiter)
        if not self.use_chat_template:
            shot_texts = [self._shot_text(s) + spec.fewshot_delimiter for s in shots]
            return system + "".join(shot_texts) + render_text(spec, item)
        messages = [{"role": "system", "content": system}] if system else []
        for shot in shots:
            messages.append({"role": "user", "content": render_text(spec, shot)})
            messages.append({"role": "assistant", "content": self._gold(shot)})
        messages.append({"role": "user", "content": render_text(spec, item)})
        return self._apply_chat_template(messages)

    def _apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """The tokenizer's template, as lm-eval's HF backend applies it (a template that
        rejects the system role is retried without the system turn)."""
        assert self.tokenizer is not None
        kwargs: dict[str, Any] = {
            "chat_template": self.chat_template,
            "tokenize": False,
            "add_generation_prompt": True,
        }
        try:
            return self.tokenizer.apply_chat_template(messages, **kwargs)
        except jinja2.exceptions.TemplateError:
            user_turns = [m for m in messages if m["role"] != "system"]
            return self.tokenizer.apply_chat_template(user_turns, **kwargs)

    def render(self, item: BenchmarkItem) -> Prompt:
        """The context and the scored continuations. With the chat template the continuation
        follows the assistant tag without the target delimiter (lm-eval 0.4.13's
        ``construct_requests`` with ``apply_chat_template``: ``"A"``, not ``" A"``)."""
        choices = choice_strings(self.spec, item)
        delimiter = "" if self.use_chat_template else self.spec.target_delimiter
        return Prompt(self.context(item), tuple(delimiter + c for c in choices), tuple(choices))


# ------------------------------------------------------------------------ prompt formats
COT_TEXT = (
    "{% set letters = labels | map('length') | max == 1 %}"
    'Think step by step and then finish your answer with "the answer is (X)" where X is '
    "{% if letters %}the correct letter choice"
    "{% else %}{{ labels[:-1] | join(', ') }} or {{ labels[-1] }}{% endif %}.\n"
    "{% if context %}Abstract: {{ context | join('\\n') }}\n{% endif %}"
    "Question:\n{{ question.strip() }}\nOptions:\n"
    "{% for o in options %}{{ o.label }}{% if o.text != o.label %}. {{ o.text }}{% endif %}\n"
    "{% endfor %}Answer: Let's think step by step."
)
"""Zero-shot chain of thought for every task: lm-eval 0.4.13's ``mmlu_pro`` prompt
(``mmlu_pro/utils.py`` ``format_cot_example`` without its shots, the instruction of its
``description``), whose answer line its ``regex`` filter reads (``answer is \\(?([A-J])\\)?``).
The instruction opens the user turn rather than the description (the system turn, with a chat
template) so that it names each item's labels (PubMedQA's yes, no, maybe) and survives templates
without a system role; PubMedQA's abstract precedes the question, as in its YAML."""


class TaskFormat(ABC):
    """A protocol's ``prompt_format``: the task spec its prompts are rendered from."""

    name: ClassVar[str]

    @abstractmethod
    def task(self, spec: TaskSpec) -> TaskSpec:
        """`spec` as this format asks its items."""


class MultipleChoiceFormat(TaskFormat):
    """The task YAML as it is: lm-eval's prompt."""

    name = "multiple_choice"

    def task(self, spec: TaskSpec) -> TaskSpec:
        return spec


class ClozeFormat(TaskFormat):
    """The question alone, each option's text scored (:func:`~med42ray.benchmarks.cloze_task`)."""

    name = "cloze"

    def task(self, spec: TaskSpec) -> TaskSpec:
        return cloze_task(spec)


class ChainOfThoughtFormat(TaskFormat):
    """Every option with its label and a request for reasoning ending in the answer line
    (:data:`COT_TEXT`), for generation: a letter is a valid answer for every task, PubMedQA's
    label its yes/no/maybe. The task's description (MMLU's subject line) is kept."""

    name = "cot"

    def task(self, spec: TaskSpec) -> TaskSpec:
        return spec.model_copy(update={"doc_to_text": COT_TEXT, "doc_to_choice": "labels"})


TASK_FORMATS: dict[str, type[TaskFormat]] = {
    f.name: f for f in (MultipleChoiceFormat, ClozeFormat, ChainOfThoughtFormat)
}


def format_task(spec: TaskSpec, prompt_format: str) -> TaskSpec:
    """`spec` as the protocol's `prompt_format` renders it."""
    return TASK_FORMATS[prompt_format]().task(spec)
