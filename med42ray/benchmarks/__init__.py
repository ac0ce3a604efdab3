"""Benchmarks as data: task YAMLs and one loader per schema, shared by every stage.

Evaluation renders prompts from the items, the data stage's decontamination indexes the very
same items, and its training adapters turn benchmark-schema records into chats through the
same normalisers. Items load from the hub, from a mirror of it (`mirror=`, a folder laid out as
the hub repositories), or from a local file or folder in any published form: the hub's rows or
the original release files (MedMCQA's 1-based `dev.json`, HEAD-QA's nested exams, MMLU's CSVs,
PubMedQA's `{PMID: item}` with its test fold, medAlpaca's USMLE folder), the form detected from
the data. This package imports nothing of the config, the models or any stage.

    tasks.py       task YAMLs (`include:` templates, titles, groups), the cloze formulation
    schemas.py     BenchmarkItem and the normaliser of each schema
    forms.py       the published forms: a local file or folder -> canonical records
    loaders.py     hub, mirror or local rows -> items, with their provenance
    provenance.py  source, form, drops and content hash of a loaded benchmark
"""

from med42ray.benchmarks.forms import medmcqa_cop_base
from med42ray.benchmarks.loaders import (
    load_benchmark,
    load_benchmark_with_provenance,
    normalise_records,
    read_records,
)
from med42ray.benchmarks.provenance import LoadedBenchmark, Provenance, items_sha256
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
    "LoadedBenchmark",
    "Provenance",
    "RecordError",
    "TaskSpec",
    "cloze_task",
    "items_sha256",
    "list_tasks",
    "load_benchmark",
    "load_benchmark_with_provenance",
    "load_task",
    "medmcqa_cop_base",
    "normalise_records",
    "read_records",
    "task_groups",
    "title",
]
