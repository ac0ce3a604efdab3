"""Data stage: raw corpora -> chat records -> removal steps -> training shards + manifest.

pipeline.py     prepare_data: the stage, its steps in order
inputs.py       check_inputs / open_inputs: every source opened, every benchmark indexed, first
adapters.py     raw records -> chat messages, one adapter per source format (ADAPTERS), and the
                per-file forms (FILE_FORMS: MedMCQA's 1-based `cop`)
sources.py      source files -> record rows (RECORD_SCHEMA, MESSAGE_TYPE), DataError
lost.py         lost files (unopenable, or unreadable as a whole) and their check
quarantine.py   the check for unreadable input, and quarantine.jsonl
steps.py        the step type (a decision about live rows) and the one marking loop
sampling.py     SampleByWeight, CapPerSource
filters.py      CleaningFilter (cleaning filters + token limits), TokenCounter
dedup.py        ExactDedup, NearDedup (MinHash-LSH)
decontam.py     Decontaminate: the benchmark n-gram index, its tasks, the report
overlap.py      overlap.json: the benchmark items the kept training records still touch
text.py         the one normaliser and the word / n-gram hashes
shards.py       the kept records as train/eval Parquet shards
manifest.py     counts per source, their reconciliation (CATEGORIES), the manifest
"""

from med42ray.data.adapters import ADAPTERS
from med42ray.data.inputs import check_inputs
from med42ray.data.manifest import format_summary
from med42ray.data.pipeline import prepare_data
from med42ray.data.sources import DataError

__all__ = ["ADAPTERS", "DataError", "check_inputs", "format_summary", "prepare_data"]
