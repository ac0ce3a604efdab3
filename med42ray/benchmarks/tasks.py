"""Task YAMLs: lm-evaluation-harness's field names, `include:` templates, titles and groups.

Each task is a YAML file in `med42ray/benchmarks/tasks/` with lm-eval's field names
(`dataset_path`, `dataset_name`, `test_split`, `doc_to_text`, `doc_to_choice`, `description`,
`metric_list`), plus `schema` (which normaliser reads its records), `title` (its row label in
the report), `group` (averaged in the report, e.g. `mmlu_clinical`) and, for a dataset published
as one labelled split, `test_ids` (a JSON file beside the YAMLs listing the test fold's ids,
e.g. PubMedQA's `test_ground_truth.json`: `test_split` is then the listed rows of the hub's
`fewshot_split`, and `fewshot_split` the rest). As in lm-eval, a task may `include:` a template
YAML (a file beside it whose name starts with `_`), whose keys the task's own keys override.
Group titles live in `_groups.yaml`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

TASKS_DIR = Path(__file__).parent / "tasks"
GROUPS_FILE = TASKS_DIR / "_groups.yaml"


class BenchmarkError(ValueError):
    """A benchmark that cannot be loaded; the message names the task, file and record."""


class TaskSpec(BaseModel):
    """One task YAML (its `include:` resolved)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    title: str
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
    test_ids: str | None = None

    @model_validator(mode="after")
    def _test_ids_need_a_split_to_carve(self) -> TaskSpec:
        if self.test_ids and not self.fewshot_split:
            raise ValueError("test_ids carves the test fold out of fewshot_split: set it")
        if self.test_ids and not (TASKS_DIR / self.test_ids).is_file():
            raise ValueError(f"test_ids: no such file {self.test_ids} in {TASKS_DIR}")
        return self


def list_tasks() -> list[str]:
    """Names of every shipped task (templates, `_*.yaml`, are not tasks)."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml") if not p.name.startswith("_"))


def read_task_yaml(path: Path) -> dict[str, Any]:
    """A task YAML as a mapping, its `include:` chain merged in (the including file wins)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    include = raw.pop("include", None)
    if include is None:
        return raw
    base = path.parent / include
    if not base.is_file():
        raise BenchmarkError(f"{path}: include: no such file {base.name}")
    return {**read_task_yaml(base), **raw}


@functools.cache
def load_task(name: str) -> TaskSpec:
    """The task spec of `name` (a file in `med42ray/benchmarks/tasks/`)."""
    path = TASKS_DIR / f"{name}.yaml"
    if name.startswith("_") or not path.is_file():
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(list_tasks())}")
    raw = read_task_yaml(path)
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


@functools.cache
def _group_titles() -> dict[str, str]:
    raw = yaml.safe_load(GROUPS_FILE.read_text(encoding="utf-8")) or {}
    return {name: str(entry["title"]) for name, entry in raw.items()}


def title(name: str) -> str:
    """The report label of a task or group (its YAML `title`), else `name` itself."""
    if name in _group_titles():
        return _group_titles()[name]
    return load_task(name).title if name in list_tasks() else name


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
