"""Benchmark decontamination: an n-gram index built once, a filter run by Ray Data tasks.

Shaped like datatrove's `NGramsDecontIndexer` / `NGramsDecontFilter`:

* :func:`build_index` loads the evaluation items through :func:`med42ray.benchmarks.
  load_benchmark` (the same loader evaluation uses) and indexes, per item, the word n-grams of
  the question stem joined with its options and of the stem joined with its gold answer (so
  n-grams from the question, from the answer and across the question/answer boundary). Stems
  shorter than `n` words are indexed whole (matched as a contiguous word sequence), as is a
  short stem + gold answer. Texts go through the stage's one normaliser (`text.normalize`).
  The sort that builds each table also counts the distinct items of every n-gram: those in
  more than `max_item_frequency` items (exam boilerplate: "which of the following is the most
  likely ...", vital-sign lines) are flagged and never count as evidence on their own.
* :class:`Decontaminate` (the step; Ray Data tasks) gets the index through the object store,
  once per worker process, and checks the joined text of every record (all turns, so n-grams
  across the user/assistant boundary count). A record is removed when it holds enough of ONE item: a
  share `min_coverage` of the item's evidence n-grams (`ngram_coverage`); a contiguous match of
  `min_contiguous_words` words, or of the item's whole stem when shorter (`contiguous`: option
  order does not matter); an evidence n-gram joining the stem to the gold answer (`answer`); a
  short item whole (`whole`). With `fuzzy`, the user turn's MinHash is compared (LSH) with each
  item's stem + options. Each removal records its rule, share, span and reason.

Work is vectorised per chunk of about a MiB of text: one `hash_array` call for its distinct
words, n-gram hashes of every length from one prefix sum (`text.NgramHasher`), a packed bitmap
that screens out all but ~1.5% of the windows that are not in the index, one `searchsorted`
per n-gram length for the rest, and the per (record, item) evidence folded with numpy.
`scripts/decontam_real.py` measures the rule on real exam data; `perf/data_bench.py` its speed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from med42ray.benchmarks import BenchmarkError, BenchmarkItem, load_benchmark
from med42ray.config import DecontamConfig, ExperimentConfig, NearDedupConfig
from med42ray.data.dedup import MinHasher, jaccard
from med42ray.data.sources import DataError
from med42ray.data.steps import Decision, Removal, Step, live_rows, mark, removed
from med42ray.data.text import (
    NgramHasher,
    batch_words,
    normalize,
    text_chunks,
    within_one_sequence,
)

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.data import Dataset

log = logging.getLogger(__name__)

BITMAP_BITS = (1 << 16, 1 << 26)
"""A presence bitmap per n-gram length (32 to 64 bits per distinct hash, within these bounds:
at most 8 MiB) screens lookups before the binary search (2-3% false positives). Measured on
10k items: a smaller one sends too many windows to the search, a larger one misses cache."""
MIN_WHOLE_WORDS = 6
"""A stem shorter than `n` words is matched whole only when it has at least this many words."""
GRAM_STEM, GRAM_ANSWER = 1, 2
MIN_ANSWER_WORDS = 3
"""A stem-to-answer n-gram holds this many answer words (all, when shorter): one word could
be an option label."""
"""Kinds of indexed n-grams: inside the stem; joining the stem to the gold answer; else 0."""


@dataclass
class DecontamIndex:
    """Hashed n-grams (and whole short sequences) -> benchmark items; read-only once built."""

    n: int
    min_coverage: float = 0.0
    min_contiguous_words: int = 0
    max_item_frequency: int = 0
    tasks: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    totals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # evidence grams
    stem_words: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    tables: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    frequent: dict[int, np.ndarray] = field(default_factory=dict)  # per table row: boilerplate
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # n-gram rows: GRAM_*
    excluded: int = 0  # distinct n-grams (and whole sequences) excluded as frequent
    keys: dict[int, np.ndarray] = field(default_factory=dict)  # distinct hashes, sorted
    starts: dict[int, np.ndarray] = field(default_factory=dict)  # key k: table rows [k], [k+1]
    bitmaps: dict[int, np.ndarray] = field(default_factory=dict)  # packed bits: maybe present
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

    All items' texts are normalised, split and hashed at once (`batch_words`), their sequences
    (`item_sequences`) gathered from those word hashes, then one prefix-sum pass hashes the
    n-grams and a sort per n-gram length dedupes (hash, item) pairs, orders the lookup table and
    counts the distinct items of each hash (those in more than `max_item_frequency` items are
    flagged frequent: kept for contiguity, never counted as evidence).
    """
    n, items = dc.ngram, list(items)
    index = DecontamIndex(
        n=n,
        min_coverage=dc.coverage,
        min_contiguous_words=dc.min_contiguous_words,
        max_item_frequency=dc.max_item_frequency,
    )
    for item in items:
        index.tasks.append(item.task)
        index.item_ids.append(str(item.id))
        index.per_task[item.task] = index.per_task.get(item.task, 0) + 1
    seqs = _item_word_sequences(items, n)
    index.stem_words = seqs.stems
    totals = np.zeros(len(index.item_ids), dtype=np.int32)
    for length, hashes, owners, kind in _sequence_grams(seqs, n):
        hashes, owners, kind, frequent = _table(hashes, owners, kind, dc.max_item_frequency)
        if length == n:
            index.kind = kind
        totals += np.bincount(owners[~frequent], minlength=len(totals)).astype(np.int32)
        index.excluded += len(np.unique(hashes[frequent]))
        index.tables[length] = (hashes, owners.astype(np.int32))
        index.frequent[length] = frequent
        index.keys[length], index.starts[length], index.bitmaps[length] = _lookup_table(hashes)
    index.totals = totals
    if dc.fuzzy:
        texts = [item.question + " " + " ".join(item.choices) for item in items]
        _add_fuzzy(index, texts, dc, fuzzy_cfg or NearDedupConfig())
    return index


@dataclass
class WordSequences:
    """The indexed sequences of all items, concatenated: word hashes and, per sequence, its
    item, length and whether it is a stem + gold answer one; per item, its stem's words."""

    hashes: np.ndarray
    item: np.ndarray
    length: np.ndarray
    answer: np.ndarray
    stems: np.ndarray


def _item_word_sequences(items: Sequence, n: int) -> WordSequences:
    """`item_sequences` of every item, built from one `batch_words` call over all the items'
    texts (stem, each option, gold answer): a sequence is a list of texts whose words follow
    each other, gathered from the batch's word hashes."""
    texts: list[str] = []
    parts = []
    for item in items:
        first = len(texts)
        texts += [item.question, *item.choices, item.gold_text]
        parts.append((first, list(range(first + 1, len(texts) - 1)), len(texts) - 1))
    hashes, lengths, _ = batch_words(texts)
    words = lengths.tolist()
    seq_texts: list[int] = []  # the texts of every sequence, flattened
    seq_item, seq_ntexts, seq_answer, stems = [], [], [], []
    for idx, (stem, options, gold) in enumerate(parts):
        size, opts = words[stem], sum(words[c] for c in options)
        stems.append(size)
        if size >= n:
            seqs = [([stem, *options], False), ([stem, gold], True)]
        else:
            seqs = [([stem], size >= MIN_WHOLE_WORDS)]
            seqs += [([stem, *options], size + opts >= MIN_WHOLE_WORDS)]
            seqs += [([stem, gold], size + words[gold] >= MIN_WHOLE_WORDS)]
            seqs = [(ids, False) for ids, keep in seqs if keep]
        for ids, answer in seqs:
            seq_texts += ids
            seq_item.append(idx)
            seq_ntexts.append(len(ids))
            seq_answer.append(answer)
    text_ids = np.asarray(seq_texts, dtype=np.int64)
    count = lengths[text_ids]
    start = (np.cumsum(lengths) - lengths)[text_ids]
    pos = np.repeat(start - (np.cumsum(count) - count), count) + np.arange(count.sum())
    seq_of_text = np.repeat(np.arange(len(seq_ntexts)), seq_ntexts)
    seq_len = np.bincount(seq_of_text, weights=count, minlength=len(seq_ntexts))
    return WordSequences(
        hashes[pos],
        np.asarray(seq_item, dtype=np.int64),
        seq_len.astype(np.int64),
        np.asarray(seq_answer, dtype=bool),
        np.asarray(stems, dtype=np.int32),
    )


def _table(
    hashes: np.ndarray, owners: np.ndarray, kind: np.ndarray, max_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, owners, kind) sorted with duplicate pairs dropped (keeping the highest kind),
    and which rows are frequent: a hash owned by more than `max_items` distinct items (none
    when it is 0)."""
    order = np.lexsort((-kind, owners, hashes))
    hashes, owners, kind = hashes[order], owners[order], kind[order]
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])
    hashes, owners, kind = hashes[first], owners[first], kind[first]
    if not max_items or not len(hashes):
        return hashes, owners, kind, np.zeros(len(hashes), dtype=bool)
    new = np.flatnonzero(np.concatenate([[True], hashes[1:] != hashes[:-1]]))
    counts = np.diff(np.concatenate([new, [len(hashes)]]))
    return hashes, owners, kind, np.repeat(counts > max_items, counts)


def _lookup_table(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct hashes, their first row and a final end row, packed presence bitmap) of a
    sorted hash column: one `searchsorted` finds a key, its rows follow from `starts`."""
    first = np.flatnonzero(np.concatenate([[True], hashes[1:] != hashes[:-1]]))
    keys = hashes[first]
    bits = int(np.clip(1 << int(32 * max(len(keys), 1) - 1).bit_length(), *BITMAP_BITS))
    slot = keys & np.uint64(bits - 1)
    bitmap = np.zeros(bits // 8, dtype=np.uint8)
    np.bitwise_or.at(
        bitmap, slot >> np.uint64(3), np.left_shift(1, slot & np.uint64(7)).astype(np.uint8)
    )
    return keys, np.append(first, len(hashes)), bitmap


def maybe_present(bitmap: np.ndarray, grams: np.ndarray) -> np.ndarray:
    """Positions of the `grams` whose bit is set in `bitmap` (no false negatives)."""
    slot = grams & np.uint64(len(bitmap) * 8 - 1)
    bit = (slot & np.uint64(7)).astype(np.uint8)
    slot >>= np.uint64(3)
    byte = bitmap[slot.view(np.int64)]
    np.right_shift(byte, bit, out=byte)
    return np.flatnonzero(byte & np.uint8(1))


def _add_fuzzy(
    index: DecontamIndex, texts: list[str], dc: DecontamConfig, cfg: NearDedupConfig
) -> None:
    """MinHash signatures of the items' stem + options, and their LSH buckets."""
    hasher = MinHasher(cfg.num_perm, cfg.shingle_size)
    sigs = [hasher.signature(normalize(t).split()) for t in texts]
    index.fuzzy_sigs = np.stack(sigs) if sigs else np.zeros((0, cfg.num_perm), np.uint32)
    index.fuzzy_threshold, index.fuzzy_cfg = dc.fuzzy_threshold, cfg
    for i, sig in enumerate(sigs):
        for b, key in enumerate(hasher.bands(sig, cfg.bands)):
            index.fuzzy_lsh.setdefault((b, key), []).append(i)


def _sequence_grams(
    seqs: WordSequences, n: int
) -> Iterable[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(gram length, gram hashes, owning items, `GRAM_*` kind) of the concatenated sequences:
    every `n`-gram of the sequences of `n` words or more (each starts with its item's stem; an
    `answer` one continues with the gold answer), and each shorter sequence whole."""
    lens, owner_item, stem_words = seqs.length, seqs.item, seqs.stems
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    owner = np.repeat(np.arange(len(lens)), lens)
    hasher = NgramHasher(seqs.hashes)
    grams = hasher(n)
    if len(grams):
        pos = np.flatnonzero(within_one_sequence(owner, np.arange(len(grams)), n))
        pos = pos[lens[owner[pos]] >= n]
        items = owner_item[owner[pos]]
        into_tail = pos - starts[owner[pos]] + n - stem_words[items]  # words past the stem
        in_stem = into_tail <= 0
        tail = np.minimum(lens[owner[pos]] - stem_words[items], MIN_ANSWER_WORDS)
        answer = seqs.answer[owner[pos]] & (into_tail >= tail)
        kind = np.where(in_stem, GRAM_STEM, np.where(answer, GRAM_ANSWER, 0)).astype(np.int8)
        yield n, grams[pos], items, kind
    for length in sorted(set(lens[lens < n].tolist())):
        short = np.flatnonzero(lens == length)
        whole = hasher(length)[starts[short]]
        yield length, whole, owner_item[short], np.zeros(len(short), dtype=np.int8)


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
    """Why a record was removed: the item, the rule that fired and its evidence."""

    benchmark: str
    item_id: str
    method: str  # "ngram_coverage" | "contiguous" | "whole" | "fuzzy"
    span: str
    share: float = 1.0  # the item's evidence n-grams found (fuzzy: MinHash Jaccard)
    words: int = 0  # the longest contiguous match, in words
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "benchmark": self.benchmark,
                "item_id": self.item_id,
                "method": self.method,
                "match": self.span,
                "share": round(self.share, 4),
                "words": self.words,
                "reason": self.reason,
            }
        )


SPAN_WORDS = 60
"""Words of the matched span kept in a `Match`."""


@dataclass
class Hits:
    """Every (batch window, index row) pair found: parallel arrays."""

    pos: np.ndarray  # first word of the window in the batch
    length: np.ndarray
    item: np.ndarray
    gram: np.ndarray
    frequent: np.ndarray
    kind: np.ndarray  # GRAM_* of n-gram rows, 0 for whole sequences


def lookup(index: DecontamIndex, hashes: np.ndarray, owner: np.ndarray) -> Hits:
    """The windows of a batch's words (`owner`: the record of each word) found in the index, one
    row per item owning them; a bitmap screens, one `searchsorted` per gram length finds."""
    parts, hasher = [], NgramHasher(hashes)
    for length in sorted(index.tables, reverse=True):
        grams = hasher(length)
        if not len(grams) or not len(index.keys[length]):
            continue
        maybe = maybe_present(index.bitmaps[length], grams)
        maybe = maybe[within_one_sequence(owner, maybe, length)]  # windows within one record
        keys, starts = index.keys[length], index.starts[length]
        at = np.minimum(np.searchsorted(keys, grams[maybe]), len(keys) - 1)
        found = keys[at] == grams[maybe]
        maybe, at = maybe[found], at[found]
        count = starts[at + 1] - starts[at]
        pos = np.repeat(maybe, count)
        rows = np.repeat(starts[at] - (np.cumsum(count) - count), count) + np.arange(count.sum())
        kind = index.kind[rows] if length == index.n else np.zeros(len(rows), np.int8)
        frequent = index.frequent[length][rows]
        items = index.tables[length][1][rows]
        parts.append((pos, np.full(len(pos), length), items, grams[pos], frequent, kind))
    if not parts:
        dtypes = (np.int64, np.int64, np.int32, np.uint64, bool, np.int8)
        return Hits(*(np.zeros(0, t) for t in dtypes))
    return Hits(*(np.concatenate(col) for col in zip(*parts, strict=True)))


@dataclass
class Evidence:
    """Per (record, item) pair with hits: evidence n-grams found, the longest contiguous run
    holding one (its words, first word, and whether it spans the whole stem), whole matches."""

    rec: np.ndarray
    item: np.ndarray
    found: np.ndarray
    run_words: np.ndarray
    run_start: np.ndarray
    whole_stem: np.ndarray
    whole_at: np.ndarray  # first word of a whole-sequence match, -1 when none
    whole_len: np.ndarray
    answer: np.ndarray  # an evidence n-gram joining the stem to the gold answer


def evidence(index: DecontamIndex, hits: Hits, owner: np.ndarray) -> Evidence:
    """Fold the hits of a batch into per (record, item) evidence, vectorised."""
    n_items = max(len(index.item_ids), 1)
    key = owner[hits.pos] * n_items + hits.item
    keys, inv = np.unique(key, return_inverse=True)
    rare = ~hits.frequent
    order = np.lexsort((hits.gram, hits.length, inv))
    distinct = np.ones(len(order), bool)
    distinct[1:] = (inv[order][1:] != inv[order][:-1]) | (
        hits.gram[order][1:] != hits.gram[order][:-1]
    )
    found = np.bincount(inv[order], weights=distinct & rare[order], minlength=len(keys))
    runs = _runs(index, hits, inv, len(keys))
    whole = np.flatnonzero((hits.length < index.n) & rare)
    whole_at = np.full(len(keys), -1, np.int64)
    whole_len = np.zeros(len(keys), np.int64)
    whole_at[inv[whole]], whole_len[inv[whole]] = hits.pos[whole], hits.length[whole]
    answer = np.bincount(inv, weights=rare & (hits.kind == GRAM_ANSWER), minlength=len(keys))
    found = found.astype(np.int64)
    return Evidence(keys // n_items, keys % n_items, found, *runs, whole_at, whole_len, answer > 0)


def _runs(
    index: DecontamIndex, hits: Hits, inv: np.ndarray, n_keys: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per key: words of the longest run of consecutive n-gram hits holding an evidence n-gram,
    its first word, and whether some such run holds every n-gram of the item's stem."""
    sel = np.flatnonzero(hits.length == index.n)
    sel = sel[np.lexsort((hits.pos[sel], inv[sel]))]
    k, pos = inv[sel], hits.pos[sel]
    brk = np.ones(len(sel), bool)
    brk[1:] = (k[1:] != k[:-1]) | (pos[1:] != pos[:-1] + 1)
    run = np.cumsum(brk) - 1
    size = np.bincount(run)
    ok = np.bincount(run, weights=~hits.frequent[sel]) > 0
    stem = np.bincount(run, weights=hits.kind[sel] == GRAM_STEM)
    run_key, run_pos = k[brk], pos[brk]
    stem_grams = index.stem_words[hits.item[sel][brk]].astype(np.int64) - index.n + 1
    whole_stem = ok & (stem_grams > 0) & (stem >= stem_grams)
    words = np.where(ok, size + index.n - 1, 0)
    best = np.lexsort((-run_pos, words, run_key))  # per key, its longest (then first) run last
    last = np.ones(len(best), bool)
    last[:-1] = run_key[best][1:] != run_key[best][:-1]
    run_words, run_start = np.zeros(n_keys, np.int64), np.zeros(n_keys, np.int64)
    run_words[run_key[best][last]] = words[best][last]
    run_start[run_key[best][last]] = run_pos[best][last]
    covers = np.zeros(n_keys, bool)
    np.logical_or.at(covers, run_key, whole_stem)
    return run_words, run_start, covers


def decide(index: DecontamIndex, ev: Evidence, k: int) -> tuple[str, str] | None:
    """(method, reason) when the evidence for pair `k` removes the record, else None."""
    n, item = index.n, int(ev.item[k])
    total, found = int(index.totals[item]), int(ev.found[k])
    share = found / max(total, 1)
    if ev.whole_at[k] >= 0:
        return "whole", f"whole sequence of {int(ev.whole_len[k])} words (shorter than n={n})"
    if ev.answer[k]:
        return "answer", "an n-gram joining the item's stem to its gold answer"
    stem = int(index.stem_words[item])
    need = index.min_contiguous_words
    if need and (ev.run_words[k] >= need or ev.whole_stem[k]):
        why = f">= {need}" if ev.run_words[k] >= need else f"the whole stem ({stem} words)"
        return "contiguous", f"{int(ev.run_words[k])} contiguous words, {why}"
    if found and share >= index.min_coverage:
        return "ngram_coverage", (
            f"{found}/{total} evidence {n}-grams of the item = {share:.2f} "
            f">= min_coverage {index.min_coverage}"
        )
    return None


def match_batch(
    index: DecontamIndex, texts: Sequence[str], user_texts: Sequence[str] | None = None
) -> list[Match | None]:
    """The strongest contamination found in each text (None when clean), vectorised per batch."""
    return match_and_touch(index, texts, user_texts)[0]


def match_and_touch(
    index: DecontamIndex, texts: Sequence[str], user_texts: Sequence[str] | None = None
) -> tuple[list[Match | None], pa.ListArray]:
    """`match_batch`'s matches, and per text the items it touches at all (`touched_items`),
    both from one lookup."""
    hashes, lengths, words = batch_words(texts)
    owner = np.repeat(np.arange(len(texts)), lengths)
    results: list[Match | None] = [None] * len(texts)
    ev = evidence(index, lookup(index, hashes, owner), owner)
    share = ev.found / np.maximum(index.totals[ev.item], 1)
    for k in np.lexsort((-share, ev.rec)).tolist():  # per record, highest share first
        rec = int(ev.rec[k])
        if results[rec] is not None:
            continue
        verdict = decide(index, ev, k)
        if verdict is not None:
            results[rec] = _match(index, ev, k, float(share[k]), verdict, words)
    if index.fuzzy_sigs is not None and user_texts is not None:
        _fuzzy_matches(index, user_texts, results)
    return results, touched_items(ev, len(texts))


def touched_items(ev: Evidence, n_records: int) -> pa.ListArray:
    """Per record, the index rows of the items it touches at all: one non-frequent n-gram of
    the item, or a whole match (whether or not that is enough to remove the record)."""
    touched = (ev.found > 0) | (ev.whole_at >= 0)
    rec, item = ev.rec[touched], ev.item[touched]  # sorted by (record, item)
    counts = np.bincount(rec, minlength=n_records)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(item.astype(np.int32)))


def _match(
    index: DecontamIndex, ev: Evidence, k: int, share: float, verdict: tuple[str, str], words
) -> Match:
    """The `Match` of evidence pair `k`: its span is the whole match or the longest run."""
    method, reason = verdict
    item = int(ev.item[k])
    if method == "whole":
        first, size = int(ev.whole_at[k]), int(ev.whole_len[k])
    else:
        first, size = int(ev.run_start[k]), max(int(ev.run_words[k]), index.n)
    span = " ".join(words.slice(first, min(size, SPAN_WORDS)).to_pylist())
    return Match(
        index.tasks[item], index.item_ids[item], method, span, share, int(ev.run_words[k]), reason
    )


def _fuzzy_matches(
    index: DecontamIndex, user_texts: Sequence[str], results: list[Match | None]
) -> None:
    """Fill the records still clean whose user turn's MinHash is close to an item's."""
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
                    index.tasks[i],
                    index.item_ids[i],
                    "fuzzy",
                    text[:200],
                    sim,
                    reason=f"MinHash Jaccard {sim:.2f} >= {index.fuzzy_threshold}",
                )
                break


_SHARED: dict[str, DecontamIndex] = {}
"""Per worker process, the index of the step running: fetched once, not once per task (its
numpy tables are read zero-copy from the object store; the last one stays until the next)."""


def shared_index(ref: ObjectRef) -> DecontamIndex:
    """The index behind the ObjectRef `ref`, fetched once per process."""
    import ray

    key = ref.hex()
    if key not in _SHARED:
        _SHARED.clear()
        _SHARED[key] = ray.get(ref)
    return _SHARED[key]


class Decontaminate(Step):
    """The decontamination step: per-batch Ray Data tasks that remove the live records matching
    the index, which they share through the object store (fetched once per worker process)."""

    category = "decontaminated"

    def __init__(
        self,
        index: DecontamIndex | ObjectRef | None,
        concurrency: int = 1,
        benchmarks: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        """`index`: a `DecontamIndex`, None (no decontamination), or the ObjectRef of one (as
        the tasks get it: resolved on first use)."""
        import ray

        self._ref = index if isinstance(index, ray.ObjectRef) else None
        self._index = None if self._ref is not None else index
        self.concurrency = concurrency
        self.benchmarks = list(benchmarks)  # (name, path) indexed, for the report

    @property
    def index(self) -> DecontamIndex | None:
        return shared_index(self._ref) if self._ref is not None else self._index

    def check(self, batch: pa.Table, live: list[int]) -> tuple[list[Match | None], pa.ListArray]:
        """The matches of the `live` rows, and the items each touches (`match_and_touch`, run
        on chunks of about `CHUNK_BYTES` of text)."""
        index = self.index
        msgs = batch.column("messages").combine_chunks()
        if len(live) < len(msgs):
            msgs = msgs.take(pa.array(live))
        users = None
        if index.fuzzy_sigs is not None:
            users = [
                " ".join(m["content"] for m in rec if m["role"] == "user")
                for rec in msgs.to_pylist()
            ]
        texts = joined_contents(msgs)
        found: list[Match | None] = []
        touched = []
        for lo, hi in text_chunks(texts):
            chunk_users = users[lo:hi] if users is not None else None
            matches, items = match_and_touch(index, texts.slice(lo, hi - lo), chunk_users)
            found += matches
            touched.append(items)
        return found, pa.concat_arrays(touched)

    def decide(self, batch: pa.Table, live: list[int]) -> Decision:
        return removals(live, self.check(batch, live)[0])

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The batch with this step's removals marked, and a `touched` column: the index rows
        of the items each record kept here touches (empty for every other row)."""
        live = live_rows(batch)
        found, touched = self.check(batch, live) if live else ([], None)
        batch = mark(batch, self.category, removals(live, found))
        column = kept_touched(batch.num_rows, live, found, touched)
        return batch.append_column(TOUCHED, column)

    def apply(self, ds: Dataset) -> Dataset:
        """Per-batch tasks over `ds`, at most `concurrency` at once; `ds` as it is without an
        index. Tasks, not an actor pool: they start in Ray's warm worker processes (an actor
        pool spawns and imports its processes on every run: about a second on 2 cores), and
        hold no CPU between batches, so upstream steps stream into this one."""
        import ray

        if self.index is None:
            return ds
        task = Decontaminate(self._ref or ray.put(self._index), self.concurrency)
        return ds.map_batches(
            task,
            batch_format="pyarrow",
            batch_size=None,  # whole blocks: no re-batching copies; `check` chunks the text
            compute=ray.data.TaskPoolStrategy(size=self.concurrency),
        )

    def report(self, ds, folder: Path, dc: DecontamConfig) -> dict:
        """`decontamination.{parquet,csv,md}` in `folder` for the records of `ds` this step
        removed; the manifest's `decontamination` entry."""
        rows = removed(ds, self.category, ["id", "source", "source_file", "row", "detail"])
        summary = write_report(rows.to_pandas(), self.index, dc, folder, self.benchmarks)
        return {**summary, "enabled": self.index is not None}


TOUCHED = "touched"
"""The column `Decontaminate` adds: per kept record, the index rows of the items it touches."""


def removals(live: list[int], found: Sequence[Match | None]) -> Decision:
    """The `Removal` of each `live` row with a match."""
    return {
        i: Removal(m.benchmark, m.to_json())
        for i, m in zip(live, found, strict=True)
        if m is not None
    }


def kept_touched(
    num_rows: int, live: list[int], found: Sequence[Match | None], touched: pa.ListArray | None
) -> pa.ListArray:
    """A `num_rows` list column: the items touched by the `live` rows not removed (`found` is
    None), empty lists elsewhere."""
    lengths = np.zeros(num_rows, np.int32)
    values = pa.array([], pa.int32())
    if touched is not None:
        keep = np.asarray([m is None for m in found], dtype=bool)
        kept = touched.filter(pa.array(keep))
        lengths[np.asarray(live, dtype=np.int64)[keep]] = pc.list_value_length(kept).to_numpy()
        values = pc.list_flatten(kept)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def joined_contents(messages: pa.ListArray) -> pa.Array:
    """`dedup.record_text` of every record of a `messages` list array (all its turns,
    newline-joined), computed in Arrow."""
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
    "words",
    "reason",
]


def rule_lines(index: DecontamIndex, dc: DecontamConfig) -> list[str]:
    """The removal rule and its parameters, as report lines."""
    contiguous = (
        f"at least {index.min_contiguous_words} contiguous words of it (or its whole stem when "
        "shorter)"
        if index.min_contiguous_words
        else "no contiguous-words rule"
    )
    freq = dc.max_item_frequency
    return [
        "- a record is removed when it holds enough of ONE item: "
        f"min_coverage = **{index.min_coverage}** of its evidence n-grams (`ngram_coverage`), "
        f"or {contiguous} (`contiguous`), or an n-gram joining its stem to its gold answer "
        f"(`answer`)",
        f"- stems shorter than n words matched whole (at least {MIN_WHOLE_WORDS} words; `whole`)",
        f"- max_item_frequency = **{freq}**: "
        + (
            f"n-grams found in more than {freq} items are boilerplate, no evidence on their own"
            if freq
            else "every shared n-gram is evidence"
        ),
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
                d.get("words", 0),
                d.get("reason", ""),
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
            f"- n-gram size n = **{dc.ngram}**; threshold = **{dc.threshold}** (legacy share "
            f"threshold; when > 0 it replaces min_coverage)",
            *rule_lines(index, dc),
            "- fuzzy MinHash check: "
            + (f"on, Jaccard >= {dc.fuzzy_threshold}" if dc.fuzzy else "off"),
            f"- index: {len(index.item_ids)} items, {index.size} hashed n-grams, "
            f"{index.excluded} excluded as frequent (in more than {dc.max_item_frequency} items)",
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
        "min_coverage": dc.coverage,
        "min_contiguous_words": dc.min_contiguous_words,
        "max_item_frequency": dc.max_item_frequency,
        "excluded_frequent_ngrams": index.excluded if index else 0,
        "fuzzy": dc.fuzzy,
        "items_indexed": len(index.item_ids) if index else 0,
        "index_ngrams": index.size if index else 0,
    }
