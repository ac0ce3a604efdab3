"""What a loaded benchmark is: its source, the form read, what was dropped, a content hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from med42ray.benchmarks.schemas import BenchmarkItem


@dataclass(frozen=True)
class Provenance:
    """Where a benchmark's items came from.

    `source` is `hub id:config:split` (a mirror's folder in place of the id) or the local path;
    `form` the published form read (`hub`, `json_lines`, `headqa_nested`, `mmlu_csv`,
    `pubmedqa_dict`, `medalpaca_usmle`, ..); `dropped` counts the records left out, by reason
    (`image_question`, `outside_test_fold`); `sha256` hashes the items (see
    :func:`items_sha256`); `details` holds what was decided on the way (`cop_base`, `file`,
    `test_fold`, `mirror`, `limit`).
    """

    task: str
    source: str
    form: str
    items: int
    dropped: Mapping[str, int]
    sha256: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (for a run's records)."""
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass(frozen=True)
class LoadedBenchmark:
    """A benchmark's items, in order, with their provenance."""

    items: list[BenchmarkItem]
    provenance: Provenance


def items_sha256(items: Iterable[BenchmarkItem]) -> str:
    """A content hash of the items as scored (id, question, choices, gold, context), stable
    across runs and platforms: one compact UTF-8 JSON line an item, in order."""
    digest = hashlib.sha256()
    for item in items:
        canonical = [item.id, item.question, list(item.choices), item.gold, list(item.context)]
        line = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()
