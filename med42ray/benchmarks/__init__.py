"""Benchmarks as data: task YAMLs and one loader per schema, shared by every stage.

Evaluation renders prompts from the items, the data stage's decontamination indexes the very
same items, and its training adapters turn benchmark-schema records into chats through the
same normalisers. This package imports nothing of the config, the models or any stage.

    tasks.py     task YAMLs (`include:` templates, titles, groups), the cloze formulation
    schemas.py   BenchmarkItem and the normaliser of each schema (every published form)
    loaders.py   rows from the hub or a local file -> items
"""

from med42ray.benchmarks.loaders import load_benchmark, normalise_records, read_records
from med42ray.benchmarks.schemas import (
    LETTERS,
    NORMALISERS,
    PUBMEDQA_CHOICES,
    BenchmarkItem,
    RecordError,
)
from med42ray.benchmarks.tasks import (
    BenchmarkError,
    TaskSpec,
    cloze_task,
    list_tasks,
    load_task,
    task_groups,
    title,
)

__all__ = [
    "LETTERS",
    "NORMALISERS",
    "PUBMEDQA_CHOICES",
    "BenchmarkError",
    "BenchmarkItem",
    "RecordError",
    "TaskSpec",
    "cloze_task",
    "list_tasks",
    "load_benchmark",
    "load_task",
    "normalise_records",
    "read_records",
    "task_groups",
    "title",
]
