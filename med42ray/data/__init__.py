"""Data stage: sources -> chat records -> filters -> dedup -> decontamination -> shards."""

from med42ray.data.pipeline import format_summary, prepare_data
from med42ray.data.sources import ADAPTERS, DataError

__all__ = ["ADAPTERS", "DataError", "format_summary", "prepare_data"]
