"""The data stage's accounting: counts per source, their reconciliation, the manifest.

Every read record ends up kept or in exactly one removed category, so per source (and in
total)

    read = kept + quarantined + sampled_out + filtered + deduplicated + near_deduplicated
           + decontaminated

which :func:`reconcile` asserts, as it asserts that the kept records are the ones written.

A lost file (`med42ray.data.lost`: it could not be opened, or not read as a whole) yields no
record, so its records are not in `read`: each source lists them apart, with their count,

    lost_files: [{file, bytes, records (when known, else null), reason}, ...]
    lost_file_count: n

(`files` still lists every resolved file, lost ones included), and `totals` adds up
`lost_file_count`. A lost file reaches the manifest only when `data.allow_lost_files` names
its source; otherwise it fails the stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from med42ray.config import ExperimentConfig
from med42ray.data.filters import REASONS
from med42ray.data.lost import LostFile, lost_by_source
from med42ray.data.sources import SourceFiles

CATEGORIES = (
    "quarantined",
    "sampled_out",
    "filtered",
    "deduplicated",
    "near_deduplicated",
    "decontaminated",
)
"""The `drop` values of removed records, in pipeline order."""

Counts = dict[tuple[str, str], int]
"""(category, reason) -> records; ("", "") counts the kept ones."""


def _block_counts(batch: pa.Table) -> pa.Table:
    df = batch.select(["source", "drop", "reason"]).to_pandas()
    counts = df.value_counts(["source", "drop", "reason"]).reset_index(name="n")
    return pa.Table.from_pandas(counts, preserve_index=False)


def count_marks(ds) -> dict[str, Counts]:
    """{source: {(category, reason): n}} from the marked dataset (per-block partial counts)."""
    table = ds.map_batches(_block_counts, batch_format="pyarrow", batch_size=None).to_pandas()
    out: dict[str, Counts] = {}
    for src, drop, reason, n in table.itertuples(index=False):
        key = (drop, reason)
        out.setdefault(src, {})[key] = out.get(src, {}).get(key, 0) + int(n)
    return out


def source_counts(raw: Counts) -> dict[str, Any]:
    """One source's manifest counts: read, kept, every category, and their reasons."""
    c: dict[str, Any] = {"read": sum(raw.values()), "kept": raw.get(("", ""), 0)}
    for cat in CATEGORIES:
        c[cat] = sum(n for (d, _), n in raw.items() if d == cat)
    c["filtered_by_reason"] = {f"dropped_{r}": raw.get(("filtered", r), 0) for r in REASONS}
    c["quarantined_by_reason"] = {r: n for (d, r), n in sorted(raw.items()) if d == "quarantined"}
    c["decontaminated_by_benchmark"] = {
        r: n for (d, r), n in sorted(raw.items()) if d == "decontaminated"
    }
    return c


def reconcile(counts: dict[str, Any]) -> None:
    """read == kept + every removed category, or AssertionError."""
    removed = sum(counts[c] for c in CATEGORIES)
    if counts["read"] != counts["kept"] + removed:
        raise AssertionError(f"counts do not reconcile: {counts}")
    if counts["filtered"] != sum(counts["filtered_by_reason"].values()):
        raise AssertionError(f"filter reasons do not add up: {counts}")


def per_source(
    cfg: ExperimentConfig,
    srcs: list[SourceFiles],
    marks: dict[str, Counts],
    written: dict[str, dict[str, int]],
    lost: Sequence[LostFile] = (),
) -> dict[str, Any]:
    """The manifest's `sources`: each source's counts, reconciled with what was written, and
    its lost files."""
    sources: dict[str, Any] = {}
    lost_in = lost_by_source(lost)
    for src, scfg in zip(srcs, cfg.data.sources, strict=True):
        c = source_counts(marks.get(src.name, {}))
        reconcile(c)
        w = written[src.name]
        if w["train"] + w["eval"] != c["kept"]:
            raise AssertionError(
                f"{src.name}: kept {c['kept']} but wrote {w['train']} train + {w['eval']} eval"
            )
        c.update(
            kept_train=w["train"],
            kept_eval=w["eval"],
            epochs=scfg.epochs,
            rows_written_train=w["train_rows"],
            files=list(src.labels),
            path=scfg.path,
            format=scfg.format,
            weight=scfg.weight,
            max_records=scfg.max_records,
            lost_files=[f.to_manifest() for f in lost_in.get(src.name, [])],
            lost_file_count=len(lost_in.get(src.name, [])),
        )
        sources[src.name] = c
    return sources


def totals(sources: dict[str, Any]) -> dict[str, int]:
    """The manifest's `totals` over every source, reconciled."""
    keys = (
        "read",
        "kept",
        *CATEGORIES,
        "kept_train",
        "kept_eval",
        "rows_written_train",
        "lost_file_count",
    )
    total = {k: sum(s[k] for s in sources.values()) for k in keys}
    reasons = next(iter(sources.values()))["filtered_by_reason"]
    by_reason = {r: sum(s["filtered_by_reason"][r] for s in sources.values()) for r in reasons}
    reconcile({**total, "filtered_by_reason": by_reason})
    return total


def build_manifest(
    cfg: ExperimentConfig,
    sources: dict[str, Any],
    outputs: dict[str, list[dict[str, Any]]],
    steps: dict[str, dict[str, Any]],
    quarantined: int,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The manifest (`manifest.json`): counts, outputs, each step's statistics, settings.

    `steps` holds the `exact_dedup`, `near_dedup` and `decontamination` statistics."""
    dcfg = cfg.data
    return {
        "stage": "data",
        "config_fingerprint": cfg.fingerprint("data", "model", "eval", "seed"),
        "sources": sources,
        "totals": totals(sources),
        "outputs": outputs,
        **steps,
        "quarantine": {"path": "quarantine.jsonl", "records": quarantined},
        "settings": {
            "seed": cfg.seed,
            "eval_fraction": dcfg.eval_fraction,
            "rows_per_shard": dcfg.rows_per_shard,
            "exact_dedup": dcfg.exact_dedup,
            "system_prompt": dcfg.system_prompt,
        },
        "timings_s": timings,
    }


def format_summary(manifest: dict[str, Any]) -> str:
    """A small table of the per-source counts."""
    cols = ["read", "kept", *CATEGORIES]
    head = f"{'source':<20}" + "".join(f"{c[:12]:>13}" for c in cols)
    lines = [head]
    for name, c in {**manifest["sources"], "TOTAL": manifest["totals"]}.items():
        lines.append(f"{name[:20]:<20}" + "".join(f"{c[k]:>13}" for k in cols))
    d = manifest["decontamination"]
    lines.append(
        f"decontamination: {d['removed']} removed (n={d['ngram']}, "
        f"threshold={d['threshold']}) {d.get('per_benchmark', {})}"
    )
    for name, c in manifest["sources"].items():
        for f in c.get("lost_files", []):
            lines.append(f"lost file (allowed): {name}/{f['file']}: {f['reason']}")
    lines.append(
        f"train shards: {len(manifest['outputs']['train'])}, "
        f"eval shards: {len(manifest['outputs']['eval'])}"
    )
    return "\n".join(lines)
