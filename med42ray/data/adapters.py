"""Raw records -> chat messages: one adapter per `SourceConfig.format`, in :data:`ADAPTERS`.

Chat corpora (`alpaca`, `sharegpt`, `messages`, `qa`) have an adapter each. A benchmark-schema
corpus (every key of `med42ray.benchmarks.NORMALISERS`) is read by the very normaliser that
evaluation and decontamination use, and its `BenchmarkItem` becomes a chat in one place,
:func:`item_chat`. A record that does not fit raises :class:`BadRecord` (the benchmarks'
`RecordError`) with a quarantine reason such as `missing_field:question` or `wrong_type:cop`,
so one malformed line never kills a file. A format whose form varies by file has a per-file
form in :data:`FILE_FORMS` (MedMCQA's `cop`, 1-based in the original release), applied to all
of a file's records before they are adapted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from med42ray.benchmarks import LETTERS, NORMALISERS, BenchmarkItem, RecordError
from med42ray.benchmarks.forms import medmcqa_cop_base
from med42ray.benchmarks.schemas import field_value, optional_text

ROLES = ("system", "user", "assistant")
MAX_RECORD_BYTES = 1 << 20
"""A raw record larger than this (JSON bytes or total text) is quarantined as `oversize`."""

BadRecord = RecordError
"""A record that cannot be adapted; `reason` is its quarantine reason."""

Messages = list[dict[str, str]]


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# ---------------------------------------------------------------------------- chat corpora
def adapt_alpaca(rec: Mapping[str, Any]) -> Messages:
    """`{instruction, input?, output}` -> user (instruction, blank line, input) / assistant."""
    instruction = field_value(rec, "instruction")
    extra = optional_text(rec, "input")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [_turn("user", user), _turn("assistant", field_value(rec, "output"))]


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}


def adapt_sharegpt(rec: Mapping[str, Any]) -> Messages:
    """`{conversations: [{from: human|gpt|system, value}]}`."""
    turns = []
    for i, turn in enumerate(field_value(rec, "conversations", list)):
        if not isinstance(turn, Mapping):
            raise BadRecord("wrong_type:conversations", f"turn {i} is not an object")
        role = _SHAREGPT_ROLES.get(str(field_value(turn, "from")).lower())
        if role is None:
            raise BadRecord("wrong_type:conversations.from", f"unknown speaker {turn['from']!r}")
        turns.append(_turn(role, field_value(turn, "value")))
    return turns


def adapt_messages(rec: Mapping[str, Any]) -> Messages:
    """OpenAI-style `{messages: [{role: system|user|assistant, content}]}`."""
    turns = []
    for i, turn in enumerate(field_value(rec, "messages", list)):
        if not isinstance(turn, Mapping):
            raise BadRecord("wrong_type:messages", f"turn {i} is not an object")
        role = field_value(turn, "role")
        if role not in ROLES:
            raise BadRecord("wrong_type:messages.role", f"unknown role {role!r}")
        turns.append(_turn(role, field_value(turn, "content")))
    return turns


def adapt_qa(rec: Mapping[str, Any]) -> Messages:
    """Flashcards `{question, answer}`; `input`/`output` accepted as aliases (medical_meadow)."""
    q_key = "input" if "question" not in rec and "input" in rec else "question"
    a_key = "output" if "answer" not in rec and "output" in rec else "answer"
    return [_turn("user", field_value(rec, q_key)), _turn("assistant", field_value(rec, a_key))]


# ------------------------------------------------------------------------ benchmark schemas
def item_chat(item: BenchmarkItem) -> Messages:
    """A benchmark item as a training chat.

    Lettered items (MedQA, MedMCQA, HeadQA, MMLU, USMLE): the question and its `A. text`
    options; the answer `C. text`, then MedMCQA's explanation when there is one. Items whose
    labels are the answers themselves (PubMedQA's yes/no/maybe): the context, the question;
    the long answer, then `Answer: yes`. (Options that are letters themselves, `A`..`D`, are
    lettered too.)
    """
    gold = item.gold_text
    if item.labels != item.choices or set(item.labels) <= set(LETTERS):
        listing = "\n".join(
            f"{lab}. {text}" for lab, text in zip(item.labels, item.choices, strict=True)
        )
        user = f"{item.question}\n\n{listing}"
        answer = f"{item.labels[item.gold]}. {gold}"
        if item.meta.get("explanation"):
            answer += f"\n\nExplanation: {item.meta['explanation']}"
    else:
        user = "Context: " + " ".join(item.context) + f"\n\nQuestion: {item.question}"
        long_answer = item.meta.get("long_answer", "")
        answer = f"{long_answer}\n\nAnswer: {gold}" if long_answer else gold
    return [_turn("user", user), _turn("assistant", answer)]


def adapt_benchmark(schema: str, rec: Mapping[str, Any]) -> Messages:
    """A `schema` record, through its benchmark normaliser, as a training chat."""
    item = NORMALISERS[schema](schema, 0, rec)
    if item is None:  # e.g. a USMLE question that needs its image
        raise BadRecord("dropped_item", f"the {schema} normaliser drops this record")
    return item_chat(item)


ADAPTERS: dict[str, Callable[[Mapping[str, Any]], Messages]] = {
    "alpaca": adapt_alpaca,
    "sharegpt": adapt_sharegpt,
    "messages": adapt_messages,
    "qa": adapt_qa,
    **{schema: partial(adapt_benchmark, schema) for schema in NORMALISERS},
}
"""`SourceConfig.format` -> its adapter (a raw record -> messages, or `BadRecord`)."""


# --------------------------------------------------------------------------- per-file forms
def _int_cop(rec: Any) -> int | None:
    """A record's `cop` when it is an int (the normaliser quarantines any other)."""
    cop = rec.get("cop") if isinstance(rec, Mapping) else None
    return cop if isinstance(cop, int) and not isinstance(cop, bool) else None


def medmcqa_zero_based(records: Sequence[Any], file: str) -> list[Any]:
    """One MedMCQA file's records with `cop` 0-based, the hub's convention that the normaliser
    reads: the original release's 1-based `cop` (1..4) is shifted down by one. The base is told
    from all of the file's `cop` values (`medmcqa_cop_base`: a 0 means 0-based, a 4 1-based);
    a file with both, or with only 1..3, raises `BenchmarkError`, but a Parquet file with only
    1..3 is taken as the hub's export (the original release is JSON lines), 0-based."""
    cops = [cop for rec in records if (cop := _int_cop(rec)) is not None]
    if file.endswith(".parquet") and not {0, 4} & set(cops):
        return list(records)
    if medmcqa_cop_base(cops, file) == 0:
        return list(records)
    return [
        {**rec, "cop": cop - 1} if (cop := _int_cop(rec)) is not None and 1 <= cop <= 4 else rec
        for rec in records
    ]


FILE_FORMS: dict[str, Callable[[Sequence[Any], str], list[Any]]] = {
    "medmcqa": medmcqa_zero_based,
}
"""`SourceConfig.format` -> its per-file form: a file's raw records (and its name, for errors)
-> the records its adapter reads; `BenchmarkError` when the file's form cannot be told. Hub
(`hf://`) rows are not files: they are read as they are."""


def to_messages(fmt: str, rec: Any, system_prompt: str | None) -> Messages:
    """Adapt one raw record; prepend `system_prompt` when set and the record has none."""
    if not isinstance(rec, Mapping):
        raise BadRecord("not_an_object", f"got {type(rec).__name__}")
    messages = ADAPTERS[fmt](rec)
    if sum(len(m["content"]) for m in messages) > MAX_RECORD_BYTES:
        raise BadRecord("oversize", f"more than {MAX_RECORD_BYTES} characters of text")
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, _turn("system", system_prompt))
    return messages
