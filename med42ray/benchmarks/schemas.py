"""One normaliser per benchmark schema: a raw record -> a :class:`BenchmarkItem`.

Every published form a schema reads arrives here as rows of one of its hub forms (`forms.py`
flattens the release files into them), and is handled once: evaluation renders prompts from the
items, decontamination indexes them, and the data stage's training adapters turn the same items
into chats (`med42ray.data.adapters`). A record that does not fit raises :class:`RecordError`,
whose `reason` (`missing_field:<key>`, `wrong_type:<key>`) is what the data stage quarantines
and what evaluation reports in its one-line error.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LETTERS = string.ascii_uppercase
PUBMEDQA_CHOICES = ("yes", "no", "maybe")


class RecordError(ValueError):
    """A record that does not fit its schema; `reason` is a short machine-readable cause."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class BenchmarkItem:
    """A benchmark question in one shape for every source schema.

    `labels[i]` names option `choices[i]` (`A`.., or `yes`/`no`/`maybe`); `gold` indexes both.
    `meta` keeps what only training uses (an explanation, PubMedQA's long answer).
    """

    task: str
    id: str
    question: str
    choices: tuple[str, ...]
    labels: tuple[str, ...]
    gold: int
    context: tuple[str, ...] = ()
    subset: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def gold_text(self) -> str:
        return self.choices[self.gold]

    @property
    def options(self) -> list[dict[str, str]]:
        return [
            {"label": lab, "text": txt} for lab, txt in zip(self.labels, self.choices, strict=True)
        ]

    def template_vars(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "choices": list(self.choices),
            "labels": list(self.labels),
            "options": self.options,
            "context": list(self.context),
            "gold": self.gold,
        }


# ------------------------------------------------------------------------------ field access
def field_value(rec: Mapping[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    """`rec[key]`, which must be present, not None, and of `kind` (never a bool)."""
    if key not in rec or rec[key] is None:
        raise RecordError(f"missing_field:{key}")
    value = rec[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RecordError(f"wrong_type:{key}", f"got {type(value).__name__}")
    return value


def optional_text(rec: Mapping[str, Any], key: str) -> str:
    """`rec[key]` as a string, "" when absent or None."""
    value = rec.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"wrong_type:{key}", f"got {type(value).__name__}")
    return value


def option_text(value: Any, key: str) -> str:
    """An option's text: a string, or a number written as one."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RecordError(f"wrong_type:{key}", "expected {A: text, ...}")


def gold_index(rec: Mapping[str, Any], key: str, n_options: int) -> int:
    """`rec[key]`, a 0-based option index, range-checked against `n_options`."""
    gold = field_value(rec, key, int)
    if not 0 <= gold < n_options:
        raise RecordError(f"wrong_type:{key}", f"{gold} is not in 0..{n_options - 1}")
    return gold


def _record_id(rec: Mapping[str, Any], key: str, index: int) -> str:
    return str(rec.get(key, index))


def letter_options(rec: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`options` `{A: text, ..}` (or the hub's `[{key, value}]`) -> (labels, texts), by label."""
    options = field_value(rec, "options", (Mapping, list))
    if isinstance(options, list):  # hub parquet stores maps as [{key, value}]
        try:
            options = {o["key"]: o["value"] for o in options}
        except (TypeError, KeyError):
            raise RecordError("wrong_type:options", "expected {A: text, ...}") from None
    by_label = {str(k).strip().upper(): option_text(v, "options") for k, v in options.items()}
    if not by_label:
        raise RecordError("wrong_type:options", "expected {A: text, ...}")
    labels = tuple(sorted(by_label))
    return labels, tuple(by_label[lab] for lab in labels)


def lettered_item(
    task: str, index: int, rec: Mapping[str, Any], subset: str | None
) -> BenchmarkItem:
    """`question`, `options` {A: .., B: ..}, `answer_idx` (MedQA and the USMLE files)."""
    labels, choices = letter_options(rec)
    answer = option_text(field_value(rec, "answer_idx", (str, int)), "answer_idx")
    label = answer.strip().upper()
    if label not in labels:
        raise RecordError("wrong_type:answer_idx", f"{label!r} is not an option")
    return BenchmarkItem(
        task,
        _record_id(rec, "id", index),
        field_value(rec, "question"),
        choices,
        labels,
        labels.index(label),
        subset=subset,
    )


# ------------------------------------------------------------------------------ normalisers
def medqa(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    """GBaker/MedQA-USMLE-4-options (`question`, `options`, `answer_idx`, `meta_info`) and its
    `-hf` twin that lm-eval reads (`sent1`, `ending0..3`, `label`)."""
    if "sent1" in rec:
        choices = tuple(option_text(rec.get(f"ending{i}"), f"ending{i}") for i in range(4))
        gold = gold_index(rec, "label", len(choices))
        question = field_value(rec, "sent1")
        return BenchmarkItem(
            task, _record_id(rec, "id", index), question, choices, tuple(LETTERS[:4]), gold
        )
    return lettered_item(task, index, rec, subset=rec.get("meta_info"))


def medmcqa(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    """openlifescienceai/medmcqa: `question`, `opa..opd`, `cop` (0-3; the original release's
    1-based `cop` is rebased by its reader, `forms.medmcqa_cop_base`), `exp`, `subject_name`."""
    choices = tuple(field_value(rec, k) for k in ("opa", "opb", "opc", "opd"))
    if rec.get("cop") == -1:
        raise RecordError("unlabelled:cop", "-1: the hub's test split hides its answers")
    cop = gold_index(rec, "cop", len(choices))
    return BenchmarkItem(
        task,
        _record_id(rec, "id", index),
        field_value(rec, "question"),
        choices,
        tuple(LETTERS[:4]),
        cop,
        subset=rec.get("subject_name"),
        meta={"explanation": optional_text(rec, "exp").strip()},
    )


def pubmedqa(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    """qiaojin/PubMedQA (`question`, `context.contexts`, `long_answer`, `final_decision`) and
    BigBio's source schema that lm-eval reads (`QUESTION`, `CONTEXTS`, `LONG_ANSWER`)."""
    if "QUESTION" in rec or "CONTEXTS" in rec:
        question, contexts = field_value(rec, "QUESTION"), field_value(rec, "CONTEXTS", list)
        item_id = rec.get("PUBMED_ID", rec.get("pubid", index))
        long_answer = optional_text(rec, "LONG_ANSWER")
    else:
        question = field_value(rec, "question")
        contexts = field_value(field_value(rec, "context", Mapping), "contexts", list)
        item_id = rec.get("pubid", index)
        long_answer = optional_text(rec, "long_answer")
    if not all(isinstance(c, str) for c in contexts):
        raise RecordError("wrong_type:context.contexts")
    answer = field_value(rec, "final_decision").strip().lower()
    if answer not in PUBMEDQA_CHOICES:
        raise RecordError("wrong_type:final_decision", f"{answer!r}")
    return BenchmarkItem(
        task,
        str(item_id),
        question,
        PUBMEDQA_CHOICES,
        PUBMEDQA_CHOICES,
        PUBMEDQA_CHOICES.index(answer),
        context=tuple(contexts),
        meta={"long_answer": long_answer},
    )


def headqa_id(rec: Mapping[str, Any], index: int) -> str:
    """`<exam>:<qid>` (qids restart in every exam), as the hub's rows and the release's."""
    if rec.get("name") is not None and rec.get("qid") is not None:
        return f"{rec['name']}:{rec['qid']}"
    return _record_id(rec, "qid", index)


def headqa(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    """HEAD-QA (`qtext`, `answers` [{aid, atext}], `ra` the aid of the right answer, 1-based;
    `name` the exam): the hub's rows and the release's nested exams, flattened by its reader."""
    answers = field_value(rec, "answers", list)
    try:
        answers = sorted(answers, key=lambda a: int(a["aid"]))
        choices = tuple(option_text(a["atext"], "answers.atext") for a in answers)
        aids = [int(a["aid"]) for a in answers]
    except (TypeError, KeyError, ValueError):
        raise RecordError("wrong_type:answers", "expected [{aid, atext}, ...]") from None
    right = field_value(rec, "ra", (int, str))
    if not str(right).strip().isdigit() or int(right) not in aids:
        raise RecordError("wrong_type:ra", f"{right!r} is not an answer id")
    return BenchmarkItem(
        task,
        headqa_id(rec, index),
        field_value(rec, "qtext"),
        choices,
        tuple(LETTERS[: len(choices)]),
        aids.index(int(right)),
        subset=rec.get("category"),
    )


def mmlu(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    """cais/mmlu: `question`, `choices` [..], `answer` (0-based), `subject`."""
    choices = tuple(option_text(c, "choices") for c in field_value(rec, "choices", list))
    gold = gold_index(rec, "answer", len(choices))
    return BenchmarkItem(
        task,
        _record_id(rec, "id", index),
        field_value(rec, "question"),
        choices,
        tuple(LETTERS[: len(choices)]),
        gold,
        subset=rec.get("subject"),
    )


def usmle(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem | None:
    """The USMLE practice sets, lettered like MedQA; image-based questions are dropped (None)."""
    if rec.get("has_image"):
        return None
    step = rec.get("step")
    return lettered_item(task, index, rec, subset=str(step) if step is not None else None)


Normaliser = Callable[[str, int, Mapping[str, Any]], "BenchmarkItem | None"]
NORMALISERS: dict[str, Normaliser] = {
    "medqa": medqa,
    "medmcqa": medmcqa,
    "pubmedqa": pubmedqa,
    "headqa": headqa,
    "mmlu": mmlu,
    "usmle": usmle,
}
"""Schema name (a task YAML's `schema`, a data source's `format`) -> its normaliser."""
