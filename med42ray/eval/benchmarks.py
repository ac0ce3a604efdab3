"""Benchmarks as data: task YAMLs, one loader per benchmark schema, canonical items.

Each task is a YAML file in `med42ray/eval/tasks/` with lm-evaluation-harness's field names
(`dataset_path`, `dataset_name`, `test_split`, `doc_to_text`, `doc_to_choice`, `description`,
`metric_list`), plus `schema` (which normaliser reads its records) and `group` (averaged in the
report, e.g. `mmlu_clinical`). Records from the hub or a local file become :class:`BenchmarkItem`
objects with one shape, whatever their source schema. Evaluation renders prompts from them; the
data stage's decontamination index is built from the very same items.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

TASKS_DIR = Path(__file__).parent / "tasks"
LETTERS = string.ascii_uppercase
PUBMEDQA_CHOICES = ("yes", "no", "maybe")


class BenchmarkError(ValueError):
    """A benchmark that cannot be loaded; the message names the task, file and record."""


class TaskSpec(BaseModel):
    """One task YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    schema_: str
    dataset_path: str | None
    dataset_name: str | None = None
    test_split: str
    fewshot_split: str | None = None
    fewshot_sampler: Literal["random", "first_n"] = "random"
    fewshot_delimiter: str = "\n\n"
    group: str | None = None
    output_type: Literal["multiple_choice"] = "multiple_choice"
    description: str = ""
    doc_to_text: str
    doc_to_choice: Literal["labels", "choices"]
    target_delimiter: str = " "
    metric_list: tuple[str, ...] = ("acc",)


@dataclass(frozen=True)
class BenchmarkItem:
    """A benchmark question in one shape for every source schema.

    `labels[i]` names option `choices[i]` (`A`.., or `yes`/`no`/`maybe`); `gold` indexes both.
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


# ------------------------------------------------------------------------------ task registry
def list_tasks() -> list[str]:
    """Names of every shipped task."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


CLOZE_TEXT = "Question: {{ question.strip() }}\nAnswer:"


def cloze_task(spec: TaskSpec) -> TaskSpec:
    """The cloze formulation of a lettered multiple-choice task: the question alone, each
    option's text scored as the answer, with `acc` and `acc_norm` (OLMES's cloze formulation;
    for MMLU exactly lm-eval's `mmlu_<subject>_continuation`, description included). Tasks that
    already score answer texts (HeadQA, PubMedQA) are returned unchanged."""
    if spec.doc_to_choice != "labels":
        return spec
    return spec.model_copy(
        update={
            "doc_to_text": CLOZE_TEXT,
            "doc_to_choice": "choices",
            "description": spec.description.replace("multiple choice questions", "questions"),
            "metric_list": ("acc", "acc_norm"),
        }
    )


@functools.cache
def load_task(name: str) -> TaskSpec:
    """The task spec of `name` (a file in `med42ray/eval/tasks/`)."""
    path = TASKS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(list_tasks())}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["schema_"] = raw.pop("schema")
    if isinstance(raw.get("metric_list"), list):
        raw["metric_list"] = tuple(raw["metric_list"])
    return TaskSpec.model_validate(raw)


def task_groups() -> dict[str, list[str]]:
    """Group name -> member tasks (e.g. `mmlu_clinical` -> the six MMLU subjects)."""
    groups: dict[str, list[str]] = {}
    for name in list_tasks():
        group = load_task(name).group
        if group:
            groups.setdefault(group, []).append(name)
    return groups


# ----------------------------------------------------------------------------- normalisers
Normaliser = Callable[[str, int, Mapping[str, Any]], "BenchmarkItem | None"]


def _letter_options(
    options: Mapping[str, Any] | list[Any],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Option mapping `{A: text, ..}` (or list of {key, value}) -> (labels, texts), by label."""
    if isinstance(options, list):  # hub parquet sometimes stores maps as [{key, value}]
        options = {o["key"]: o["value"] for o in options}
    labels = tuple(sorted(str(k).strip().upper() for k in options))
    by_label = {str(k).strip().upper(): v for k, v in options.items()}
    return labels, tuple(str(by_label[lab]) for lab in labels)


def _medqa(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    if "sent1" in rec:  # GBaker/MedQA-USMLE-4-options-hf, the schema lm-eval reads
        choices = tuple(str(rec[f"ending{i}"]) for i in range(4))
        return BenchmarkItem(
            task,
            str(rec.get("id", index)),
            str(rec["sent1"]),
            choices,
            tuple(LETTERS[:4]),
            int(rec["label"]),
        )
    return _lettered_item(task, index, rec, subset=rec.get("meta_info"))


def _lettered_item(
    task: str, index: int, rec: Mapping[str, Any], subset: str | None
) -> BenchmarkItem:
    """`question`, `options` {A: .., B: ..}, `answer_idx` (MedQA and the USMLE files)."""
    labels, choices = _letter_options(rec["options"])
    gold = labels.index(str(rec["answer_idx"]).strip().upper())
    return BenchmarkItem(
        task,
        str(rec.get("id", index)),
        str(rec["question"]),
        choices,
        labels,
        gold,
        subset=subset,
    )


def _medmcqa(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    choices = tuple(str(rec[k]) for k in ("opa", "opb", "opc", "opd"))
    return BenchmarkItem(
        task,
        str(rec.get("id", index)),
        str(rec["question"]),
        choices,
        tuple(LETTERS[:4]),
        int(rec["cop"]),
        subset=rec.get("subject_name"),
    )


def _pubmedqa(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    if "QUESTION" in rec:  # BigBio source schema (lm-eval's)
        question, contexts = rec["QUESTION"], rec["CONTEXTS"]
        item_id = rec.get("PUBMED_ID", rec.get("pubid", index))
    else:  # qiaojin/PubMedQA
        question, contexts = rec["question"], rec["context"]["contexts"]
        item_id = rec.get("pubid", index)
    answer = str(rec["final_decision"]).strip().lower()
    return BenchmarkItem(
        task,
        str(item_id),
        str(question),
        PUBMEDQA_CHOICES,
        PUBMEDQA_CHOICES,
        PUBMEDQA_CHOICES.index(answer),
        context=tuple(map(str, contexts)),
    )


def _headqa(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    answers = sorted(rec["answers"], key=lambda a: int(a["aid"]))
    choices = tuple(str(a["atext"]) for a in answers)
    gold = [int(a["aid"]) for a in answers].index(int(rec["ra"]))
    return BenchmarkItem(
        task,
        str(rec.get("qid", index)),
        str(rec["qtext"]),
        choices,
        tuple(LETTERS[: len(choices)]),
        gold,
        subset=rec.get("category"),
    )


def _mmlu(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem:
    choices = tuple(str(c) for c in rec["choices"])
    return BenchmarkItem(
        task,
        str(rec.get("id", index)),
        str(rec["question"]),
        choices,
        tuple(LETTERS[: len(choices)]),
        int(rec["answer"]),
        subset=rec.get("subject"),
    )


def _usmle(task: str, index: int, rec: Mapping[str, Any]) -> BenchmarkItem | None:
    if rec.get("has_image"):
        return None
    step = rec.get("step")
    return _lettered_item(task, index, rec, subset=str(step) if step is not None else None)


NORMALISERS: dict[str, Normaliser] = {
    "medqa": _medqa,
    "medmcqa": _medmcqa,
    "pubmedqa": _pubmedqa,
    "headqa": _headqa,
    "mmlu": _mmlu,
    "usmle": _usmle,
}


def normalise_records(
    spec: TaskSpec, records: Iterable[Mapping[str, Any]], source: str
) -> list[BenchmarkItem]:
    """Records of `spec`'s schema -> items; a bad record raises naming source and index."""
    normalise = NORMALISERS[spec.schema_]
    items = []
    for index, rec in enumerate(records):
        try:
            item = normalise(spec.task, index, rec)
        except (KeyError, ValueError, TypeError, IndexError) as err:
            raise BenchmarkError(
                f"{spec.task}: {source}: record {index}: not a {spec.schema_} record "
                f"({type(err).__name__}: {err})"
            ) from None
        if item is not None:
            items.append(item)
    return items


# ---------------------------------------------------------------------------------- loading
def read_records(spec: TaskSpec, path: str | None, split: str) -> tuple[Iterable[dict], str]:
    """Rows from a local file (`json`/`parquet` builders) or the hub, via `datasets`."""
    import datasets

    from med42ray.models import hub_token

    if path:
        local = Path(path)
        if not local.exists():
            raise BenchmarkError(f"{spec.task}: {path}: no such file")
        builder = "parquet" if local.suffix == ".parquet" else "json"
        return datasets.load_dataset(builder, data_files=str(local), split="train"), str(path)
    if not spec.dataset_path:
        raise BenchmarkError(f"{spec.task}: not on the hub; give its local file as `path`")
    ds = datasets.load_dataset(spec.dataset_path, spec.dataset_name, split=split, token=hub_token())
    return ds, f"{spec.dataset_path}:{spec.dataset_name or ''}:{split}"


def load_benchmark(
    name: str, path: str | None = None, limit: int | None = None, split: str | None = None
) -> list[BenchmarkItem]:
    """The evaluation items of benchmark `name` (its test split, or a local file), in order."""
    spec = load_task(name)
    records, source = read_records(spec, path, split or spec.test_split)
    items = normalise_records(spec, records, source)
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise BenchmarkError(f"{name}: {source}: duplicate item ids {dupes}")
    return items[:limit] if limit else items
