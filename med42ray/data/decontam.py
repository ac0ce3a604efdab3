"""Benchmark decontamination: an n-gram index built once, a filter run by an actor pool.

Shaped like datatrove's `NGramsDecontIndexer` / `NGramsDecontFilter`:

* :func:`build_index` loads the evaluation items through :func:`med42ray.benchmarks.
  load_benchmark` (the same loader evaluation uses) and indexes, per item, the word n-grams of
  the question stem joined with its options and of the stem joined with its gold answer (so
  n-grams from the question, from the answer and across the question/answer boundary). Stems
  shorter than `n` words are indexed whole (matched as a contiguous word sequence), as is a
  short stem + gold answer. Texts go through the stage's one normaliser (`text.normalize`).
* :class:`Decontaminate` (the step; a Ray Data actor) receives the index once through the
  object store and checks the joined text of every record (all turns, so n-grams across the
  user/assistant boundary count). With `threshold == 0` any shared n-gram removes the
  record; otherwise the share of an item's indexed n-grams found in the record must exceed
  the threshold. With `fuzzy`, the user turn's MinHash is compared (LSH) with each item's
  stem + options.

Work is vectorised per batch: one `hash_array` call for all words, a rolling n-gram hash, and
one `searchsorted` against the sorted index per n-gram length.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from med42ray.benchmarks import BenchmarkError, BenchmarkItem, load_benchmark
from med42ray.config import DecontamConfig, ExperimentConfig, NearDedupConfig
from med42ray.data.dedup import MinHasher, jaccard
from med42ray.data.sources import DataError
from med42ray.data.steps import Decision, Removal, Step, removed
from med42ray.data.text import (
    batch_words,
    hash_words,
    ngram_hashes,
    normalize,
    within_one_sequence,
)

log = logging.getLogger(__name__)

BITMAP_SIZE = 1 << 24
"""A 16 MiB presence bitmap per n-gram length screens lookups before the binary search."""
MIN_WHOLE_WORDS = 6
"""A stem shorter than `n` words is matched whole only when it has at least this many words."""


@dataclass
class DecontamIndex:
    """Hashed n-grams (and whole short sequences) -> benchmark items; read-only once built."""

    n: int
    threshold: float
    tasks: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    totals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    tables: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    bitmaps: dict[int, np.ndarray] = field(default_factory=dict)  # hash & MASK -> maybe present
    per_task: dict[str, int] = field(default_factory=dict)
    fuzzy_threshold: float | None = None
    fuzzy_bands: int = 0
    fuzzy_cfg: NearDedupConfig | None = None
    fuzzy_sigs: np.ndarray | None = None
    fuzzy_lsh: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(h) for h, _ in self.tables.values())


def item_sequences(question: str, choices: Sequence[str], gold: str, n: int) -> list[list[str]]:
    """Word sequences indexed for one item; each is cut into n-grams, or kept whole if short."""
    stem = normalize(question).split()
    options = [w for c in choices for w in normalize(c).split()]
    answer = normalize(gold).split()
    seqs = []
    if len(stem) >= n:
        seqs += [stem + options, stem + answer]
    else:
        if len(stem) >= MIN_WHOLE_WORDS:
            seqs.append(stem)
        for tail in (options, answer):
            if len(stem) + len(tail) >= MIN_WHOLE_WORDS:
                seqs.append(stem + tail)
    return seqs


def build_index_from_items(
    items: Iterable, dc: DecontamConfig, fuzzy_cfg: NearDedupConfig | None = None
) -> DecontamIndex:
    """Index `BenchmarkItem`s (anything with task, id, question, choices, gold_text).

    All items' sequences are hashed at once: one word-hash pass, one rolling n-gram pass, and
    a sort per n-gram length that dedupes (hash, item) pairs and orders the lookup table.
    """
    n = dc.ngram
    index = DecontamIndex(n=n, threshold=dc.threshold)
    seq_words: list[str] = []
    seq_item: list[int] = []
    seq_len: list[int] = []
    fuzzy_texts = []
    for idx, item in enumerate(items):
        index.tasks.append(item.task)
        index.item_ids.append(str(item.id))
        index.per_task[item.task] = index.per_task.get(item.task, 0) + 1
        for seq in item_sequences(item.question, item.choices, item.gold_text, n):
            seq_words += seq
            seq_item.append(idx)
            seq_len.append(len(seq))
        if dc.fuzzy:
            fuzzy_texts.append(item.question + " " + " ".join(item.choices))
    totals = np.zeros(len(index.item_ids), dtype=np.int32)
    for length, hashes, owners in _sequence_grams(seq_words, seq_item, seq_len, n):
        order = np.lexsort((owners, hashes))
        hashes, owners = hashes[order], owners[order]
        first = np.ones(len(hashes), dtype=bool)
        first[1:] = (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])
        hashes, owners = hashes[first], owners[first]
        totals += np.bincount(owners, minlength=len(totals)).astype(np.int32)
        index.tables[length] = (hashes, owners.astype(np.int32))
        bitmap = np.zeros(BITMAP_SIZE, dtype=np.bool_)
        bitmap[(hashes & np.uint64(BITMAP_SIZE - 1)).astype(np.int64)] = True
        index.bitmaps[length] = bitmap
    index.totals = totals
    if dc.fuzzy:
        cfg = fuzzy_cfg or NearDedupConfig()
        hasher = MinHasher(cfg.num_perm, cfg.shingle_size)
        sigs = [hasher.signature(normalize(t).split()) for t in fuzzy_texts]
        index.fuzzy_sigs = np.stack(sigs) if sigs else np.zeros((0, cfg.num_perm), np.uint32)
        index.fuzzy_threshold, index.fuzzy_cfg = dc.fuzzy_threshold, cfg
        for i, sig in enumerate(sigs):
            for b, key in enumerate(hasher.bands(sig, cfg.bands)):
                index.fuzzy_lsh.setdefault((b, key), []).append(i)
    return index


def _sequence_grams(
    words: list[str], seq_item: list[int], seq_len: list[int], n: int
) -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
    """(gram length, gram hashes, owning items) for concatenated sequences: every `n`-gram of
    the sequences of `n` words or more, and each shorter sequence whole."""
    hashes = hash_words(words)
    lens = np.asarray(seq_len, dtype=np.int64)
    owner_item = np.asarray(seq_item, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    owner = np.repeat(np.arange(len(lens)), lens)
    grams = ngram_hashes(hashes, n)
    if len(grams):
        pos = np.flatnonzero(within_one_sequence(owner, np.arange(len(grams)), n))
        pos = pos[lens[owner[pos]] >= n]
        yield n, grams[pos], owner_item[owner[pos]]
    for length in sorted(set(lens[lens < n].tolist())):
        seqs = np.flatnonzero(lens == length)
        whole = ngram_hashes(hashes, length)[starts[seqs]]
        yield length, whole, owner_item[seqs]


def benchmark_specs(cfg: ExperimentConfig) -> list[tuple[str, str | None]]:
    """(name, local path or None) of the benchmarks to index: the decontamination list, else the
    evaluation's; a name also listed in `eval.benchmarks` takes its `path` from there."""
    paths = {b.name: b.path for b in cfg.eval.benchmarks}
    names = cfg.data.decontamination.benchmarks or [b.name for b in cfg.eval.benchmarks]
    return [(name, paths.get(name)) for name in dict.fromkeys(names)]


def load_items(name: str, path: str | None, mirror: str | None = None) -> list[BenchmarkItem]:
    """The items of one benchmark to index (from `path`, the hub or its `mirror`); a missing,
    unreadable, malformed or empty one is a one-line `DataError`."""
    where = path or "hub"
    try:
        items = load_benchmark(name, path=path, mirror=mirror)
    except BenchmarkError as err:
        raise DataError(f"decontamination benchmark {name!r}: {err}") from err
    except Exception as err:  # the reader's own errors: a file that is not JSON or Parquet
        raise DataError(
            f"decontamination benchmark {name!r} ({where}): {type(err).__name__}: {err}"
        ) from err
    if not items:
        raise DataError(f"decontamination benchmark {name!r} ({where}): no items")
    log.info("decontamination: %d items from %s (%s)", len(items), name, where)
    return items


def build_index(cfg: ExperimentConfig) -> DecontamIndex:
    """Load every benchmark once (full test/eval split: `limit` is ignored so that a shortened
    evaluation never shrinks the index) and index it."""
    mirror = cfg.resources.hub_mirror
    items = [item for name, path in benchmark_specs(cfg) for item in load_items(name, path, mirror)]
    return build_index_from_items(items, cfg.data.decontamination, cfg.data.near_dedup)


def decontam_index(
    cfg: ExperimentConfig,
) -> tuple[list[tuple[str, str | None]], DecontamIndex | None]:
    """(benchmarks, their index) for `cfg`: none when decontamination is off or has no
    benchmarks. Needs no Ray."""
    benchmarks = benchmark_specs(cfg) if cfg.data.decontamination.enabled else []
    if cfg.data.decontamination.enabled and not benchmarks:
        log.info(
            "decontamination: no benchmarks configured (data.decontamination.benchmarks / "
            "eval.benchmarks): skipped"
        )
    return benchmarks, (build_index(cfg) if benchmarks else None)


# -------------------------------------------------------------------------------- matching
@dataclass
class Match:
    benchmark: str
    item_id: str
    method: str  # "ngram" | "whole" | "fuzzy"
    span: str
    share: float = 1.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "benchmark": self.benchmark,
                "item_id": self.item_id,
                "method": self.method,
                "match": self.span,
                "share": round(self.share, 4),
            }
        )


def match_batch(
    index: DecontamIndex, texts: Sequence[str], user_texts: Sequence[str] | None = None
) -> list[Match | None]:
    """The first contamination found in each text (None when clean), vectorised per batch."""
    hashes, lengths, words = batch_words(texts)
    owner = np.repeat(np.arange(len(texts)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(texts) else lengths
    results: list[Match | None] = [None] * len(texts)
    seen: dict[int, set[tuple[int, int, int]]] = defaultdict(set)  # rec -> {(len, hash, item)}
    spans: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)  # rec -> item -> span
    for length in sorted(index.tables, reverse=True):
        table, items = index.tables[length]
        grams = ngram_hashes(hashes, length)
        if not len(grams) or not len(table):
            continue
        maybe = np.flatnonzero(
            index.bitmaps[length][(grams & np.uint64(BITMAP_SIZE - 1)).astype(np.int64)]
        )
        maybe = maybe[within_one_sequence(owner, maybe, length)]  # windows within one record
        left = np.searchsorted(table, grams[maybe])
        ok = left < len(table)
        ok[ok] = table[left[ok]] == grams[maybe[ok]]
        hit_pos, left = maybe[ok], left[ok]
        if not len(hit_pos):
            continue
        right = np.searchsorted(table, grams[hit_pos], side="right")
        for p, lo, hi in zip(hit_pos.tolist(), left.tolist(), right.tolist(), strict=True):
            rec, h = int(owner[p]), int(grams[p])
            for j in range(lo, hi):
                item = int(items[j])
                seen[rec].add((length, h, item))
                spans[rec].setdefault(item, (p - int(starts[rec]), length))
    for rec, hits in seen.items():
        per_item = Counter(item for _, _, item in hits)
        best: tuple[float, int] | None = None
        for item, count in sorted(per_item.items()):
            share = count / max(int(index.totals[item]), 1)
            if (index.threshold == 0 or share > index.threshold) and (
                best is None or share > best[0]
            ):
                best = (share, item)
        if best:
            share, item = best
            off, length = spans[rec][item]
            first = int(starts[rec]) + off
            span = " ".join(words.slice(first, length).to_pylist())
            results[rec] = Match(
                index.tasks[item],
                index.item_ids[item],
                "ngram" if length == index.n else "whole",
                span,
                share,
            )
    if index.fuzzy_sigs is not None and user_texts is not None:
        cfg = index.fuzzy_cfg
        hasher = MinHasher(cfg.num_perm, cfg.shingle_size)
        for rec, text in enumerate(user_texts):
            if results[rec] is not None or not text:
                continue
            sig = hasher.signature(normalize(text).split())
            cands = sorted(
                {
                    i
                    for b, key in enumerate(hasher.bands(sig, cfg.bands))
                    for i in index.fuzzy_lsh.get((b, key), ())
                }
            )
            for i in cands:
                sim = jaccard(sig, index.fuzzy_sigs[i])
                if sim >= index.fuzzy_threshold:
                    results[rec] = Match(
                        index.tasks[i], index.item_ids[i], "fuzzy", text[:200], sim
                    )
                    break
    return results


class Decontaminate(Step):
    """The decontamination step: a Ray Data actor holding the shared index (one copy per
    actor, from the object store), which removes the live records that match it."""

    category = "decontaminated"

    def __init__(
        self,
        index: DecontamIndex | None,
        concurrency: int = 1,
        benchmarks: Sequence[tuple[str, str | None]] = (),
    ):
        import ray

        # Handed to the actors as an ObjectRef (one `ray.put` on the driver): fetched once per
        # actor, its numpy tables read zero-copy from the object store.
        self.index = ray.get(index) if isinstance(index, ray.ObjectRef) else index
        self.concurrency = concurrency
        self.benchmarks = list(benchmarks)  # (name, path) indexed, for the report

    def decide(self, batch: pa.Table, live: list[int]) -> Decision:
        msgs = batch.column("messages").combine_chunks().take(pa.array(live))
        users = None
        if self.index.fuzzy_sigs is not None:
            users = [
                " ".join(m["content"] for m in rec if m["role"] == "user")
                for rec in msgs.to_pylist()
            ]
        found = match_batch(self.index, joined_contents(msgs), users)
        return {
            i: Removal(m.benchmark, m.to_json())
            for i, m in zip(live, found, strict=True)
            if m is not None
        }

    def apply(self, ds):
        """An actor pool of `concurrency` actors over `ds`; `ds` as it is without an index."""
        import ray

        if self.index is None:
            return ds
        # Actors read materialised input, so the pool never starves upstream tasks of CPUs.
        return ds.materialize().map_batches(
            Decontaminate,
            batch_format="pyarrow",
            batch_size=512,
            fn_constructor_args=(ray.put(self.index),),
            concurrency=self.concurrency,
        )

    def report(self, ds, folder: Path, dc: DecontamConfig) -> dict:
        """`decontamination.{parquet,csv,md}` in `folder` for the records of `ds` this step
        removed; the manifest's `decontamination` entry."""
        rows = removed(ds, self.category, ["id", "source", "source_file", "row", "detail"])
        summary = write_report(rows.to_pandas(), self.index, dc, folder, self.benchmarks)
        return {**summary, "enabled": self.index is not None}


def joined_contents(messages: pa.ListArray) -> pa.Array:
    """`dedup.record_text` of every record of a `messages` list array (all its turns,
    newline-joined), computed in Arrow."""
    import pyarrow.compute as pc

    contents = pc.struct_field(pc.list_flatten(messages), "content")
    counts = pc.list_value_length(messages).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pc.binary_join(pa.ListArray.from_arrays(offsets, contents), "\n")


# ---------------------------------------------------------------------------------- report
REPORT_COLUMNS = [
    "record_id",
    "source",
    "source_file",
    "row",
    "benchmark",
    "item_id",
    "method",
    "match",
    "share",
]


def write_report(
    rows_removed,
    index: DecontamIndex | None,
    dc: DecontamConfig,
    out: Path,
    benchmarks: list[tuple[str, str | None]],
) -> dict:
    """`decontamination.parquet` / `.csv` (one row per removed record) and `decontamination.md`."""
    import pandas as pd

    rows = []
    for rec in rows_removed.itertuples(index=False):
        d = json.loads(rec.detail)
        rows.append(
            [
                rec.id,
                rec.source,
                rec.source_file,
                rec.row,
                d["benchmark"],
                d["item_id"],
                d["method"],
                d["match"],
                d["share"],
            ]
        )
    table = pd.DataFrame(rows, columns=REPORT_COLUMNS).sort_values("record_id", kind="stable")
    table.to_parquet(out / "decontamination.parquet", index=False)
    table.to_csv(out / "decontamination.csv", index=False)
    per_bench = table.groupby("benchmark")["record_id"].count().to_dict() if len(table) else {}
    per_method = table.groupby("method")["record_id"].count().to_dict() if len(table) else {}
    lines = ["# Decontamination report", ""]
    if index is None:
        lines.append("Decontamination was **not run** (disabled, or no benchmarks configured).")
    else:
        lines += [
            f"- n-gram size n = **{dc.ngram}**; threshold = **{dc.threshold}** "
            + (
                "(any shared n-gram removes a record)"
                if dc.threshold == 0
                else "(removed when the share of an item's n-grams found exceeds it)"
            ),
            f"- stems shorter than n words matched whole (at least {MIN_WHOLE_WORDS} words)",
            "- fuzzy MinHash check: "
            + (f"on, Jaccard >= {dc.fuzzy_threshold}" if dc.fuzzy else "off"),
            f"- index: {len(index.item_ids)} items, {index.size} hashed n-grams",
            f"- records removed: **{len(table)}**",
            "",
            "| benchmark | source | items indexed | records removed |",
            "|---|---|---:|---:|",
        ]
        for name, path in benchmarks:
            lines.append(
                f"| {name} | {path or 'hub'} | {index.per_task.get(name, 0)} | "
                f"{per_bench.get(name, 0)} |"
            )
        if per_method:
            lines += [
                "",
                "By method: " + ", ".join(f"{k}: {v}" for k, v in sorted(per_method.items())),
            ]
    (out / "decontamination.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "removed": len(table),
        "per_benchmark": per_bench,
        "per_method": per_method,
        "ngram": dc.ngram,
        "threshold": dc.threshold,
        "fuzzy": dc.fuzzy,
        "items_indexed": len(index.item_ids) if index else 0,
        "index_ngrams": index.size if index else 0,
    }
