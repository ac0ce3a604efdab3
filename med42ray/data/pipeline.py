"""The data stage: `prepare_data(cfg, out)`, its steps in order.

First every input is checked, before any corpus is read (`inputs.open_inputs`: sources
resolved and opened, benchmarks loaded and indexed), so a bad path fails in seconds. Sources
are then read into one Ray Dataset of `sources.RECORD_SCHEMA` rows: unreadable records are
quarantined; a file unreadable as a whole is lost (`lost`) and fails the stage unless its
source is in `data.allow_lost_files`. The steps then mark the rows they remove, never dropping
them, so the manifest can account for every record: sample by weight, cap per source, clean
(filters and token limits), exact dedup, near dedup, decontaminate. The kept records are
written as shards. Everything is written to a temp folder that replaces `out` only when
complete, so a failed run leaves an earlier output intact:

    out/train/part-00000.parquet ...   kept records (x epochs), sorted by (epoch, source, file, row)
    out/eval/part-00000.parquet ...    held-out records when `eval_fraction > 0`
    out/manifest.json                  counts per source, outputs (rows, sha256), settings
    out/config.yaml                    the resolved experiment config
    out/quarantine.jsonl               unreadable input: file, line/row, reason
    out/decontamination.{parquet,csv,md}
    out/overlap.json                   per benchmark, the items the kept training records touch
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

from med42ray import console
from med42ray.config import ExperimentConfig
from med42ray.data.decontam import Decontaminate
from med42ray.data.dedup import ExactDedup, NearDedup
from med42ray.data.filters import CleaningFilter, TokenCounter
from med42ray.data.inputs import open_inputs
from med42ray.data.lost import check_lost_files, split_lost_files
from med42ray.data.manifest import (
    build_manifest,
    count_marks,
    format_summary,
    per_source,
)
from med42ray.data.overlap import write_overlap
from med42ray.data.paraphrase import ParaphraseCheck
from med42ray.data.quarantine import check_quarantine, quarantined, write_quarantine
from med42ray.data.sampling import CapPerSource, SampleByWeight
from med42ray.data.shards import write_shards
from med42ray.data.sources import read_sources, record_id
from med42ray.stages import atomic_dir

log = logging.getLogger(__name__)


class Laps:
    """Wall-clock seconds of each phase, logged as it ends when `verbose`."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.progress = console.current().progress("data", None, "phases")

    def restart(self) -> None:
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        self.timings[name] = round(time.perf_counter() - self.last, 3)
        self.progress.advance(1, phase=f"{name} done")
        if self.verbose:
            log.info("%s: %.1fs", name, self.timings[name])
        self.restart()

    def total(self) -> dict[str, float]:
        self.progress.close()
        self.timings["total"] = round(time.perf_counter() - self.start, 3)
        return self.timings


def prepare_data(
    cfg: ExperimentConfig,
    out: Path,
    *,
    num_blocks: int | None = None,
    concurrency: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the data stage into `out`; return the manifest. `num_blocks` / `concurrency` tune
    the parallelism only: the outputs are byte-identical whatever they are. `verbose` logs the
    time of each phase and the per-source summary."""
    import ray

    from med42ray.cluster import init_ray
    from med42ray.models import resolve_tokenizer_path

    laps, dcfg, out = Laps(verbose), cfg.data, Path(out)
    inputs = open_inputs(cfg)  # every source opened, every benchmark indexed: fails fast
    srcs = inputs.sources
    laps("inputs")
    init_ray(cfg.resources.ray_address)
    pool = concurrency or max(1, min(int(ray.cluster_resources().get("CPU", 1)), 8))
    ids = partial(record_id, srcs)

    laps.restart()
    skip = [f.path for f in inputs.unopened]
    ds = read_sources(srcs, dcfg.sources, dcfg.system_prompt, num_blocks, skip)
    ds, lost = split_lost_files(ds, srcs, inputs.unopened)
    laps("read")
    check_lost_files(dcfg.allow_lost_files, lost)
    check_quarantine(cfg, srcs, ds, out, lost)
    ds = SampleByWeight({s.name: s.weight for s in dcfg.sources}, cfg.seed).apply(ds)
    caps = {s.name: s.max_records for s in dcfg.sources if s.max_records}
    ds = CapPerSource(caps, cfg.seed).apply(ds)
    laps("sample")
    tokenizer_path = resolve_tokenizer_path(cfg.model, cfg.resources.hub_mirror)
    count_tokens = TokenCounter.load(cfg.model, tokenizer_path)
    ds = CleaningFilter(count_tokens, dcfg.filters).apply(ds)
    laps("filter")
    exact, near = ExactDedup(ids), NearDedup(dcfg.near_dedup, cfg.seed + 1, ids)
    if dcfg.exact_dedup:
        ds = exact.apply(ds)
        laps("exact_dedup")
    if dcfg.near_dedup.enabled:
        ds = near.apply(ds)
        laps("near_dedup")
    decontaminate = Decontaminate(inputs.index, pool, inputs.benchmarks)
    ds = decontaminate.apply(ds).materialize()
    laps("mark" if decontaminate.index is None else "decontaminate")
    paraphrase = None
    if dcfg.decontamination.enabled and dcfg.decontamination.paraphrase.enabled:
        paraphrase = ParaphraseCheck(cfg, inputs.benchmarks)
        ds = paraphrase.apply(ds).materialize()
        laps("paraphrase")

    marks = count_marks(ds)
    with atomic_dir(out) as tmp:
        bad = write_quarantine(quarantined(ds), tmp / "quarantine.jsonl")
        stats = {
            "exact_dedup": exact.stats,
            "near_dedup": near.stats,
            "decontamination": decontaminate.report(ds, tmp, dcfg.decontamination),
        }
        overlap = write_overlap(ds, decontaminate.index, dcfg, cfg.seed, tmp)
        stats["decontamination"]["overlap"] = overlap
        if paraphrase is not None:
            stats["decontamination"]["paraphrase"] = paraphrase.report(tmp)
        outputs, written = write_shards(ds, tmp, dcfg, cfg.seed)
        sources = per_source(cfg, srcs, marks, written, lost)
        manifest = build_manifest(cfg, sources, outputs, stats, bad, laps.total())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (tmp / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    if verbose:
        log.info("summary\n%s", format_summary(manifest))
    return manifest
