"""A strong single-process baseline of the decontamination rule: plain Python, hash sets.

The same rule as `med42ray.data.decontam` (`DecontamConfig`: `min_coverage` of an item's
evidence n-grams, `min_contiguous_words` contiguous words or the whole stem, a stem-to-answer
n-gram, a short stem whole; n-grams in more than `max_item_frequency` items are no evidence),
written the way one would without numpy: the index is a dict from word-tuple n-grams to their
items, and a record is screened with one C-level `set.isdisjoint` over its n-gram tuples (no
string joins); only the few records that share an n-gram are then scored in Python. It shares
only the definitions with the project (`normalize`, `item_sequences`), so the benchmark's
"identical removals" check also checks the vectorised implementation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from med42ray.config import DecontamConfig
from med42ray.data.decontam import (
    GRAM_ANSWER,
    GRAM_STEM,
    MIN_ANSWER_WORDS,
    item_sequences,
)
from med42ray.data.text import normalize

Gram = tuple[str, ...]


def windows(toks: list[str], n: int) -> Iterable[Gram]:
    """Every `n`-word window of `toks`, as tuples (built in C by `zip`)."""
    return zip(*(toks[i:] for i in range(n)), strict=False)


@dataclass
class HashSetIndex:
    """n-gram (and short whole sequence) tuples -> {item: kind}; frequent ones flagged."""

    dc: DecontamConfig
    grams: dict[Gram, dict[int, int]] = field(default_factory=dict)
    wholes: dict[int, dict[Gram, set[int]]] = field(default_factory=dict)  # by length
    frequent: set[Gram] = field(default_factory=set)
    totals: list[int] = field(default_factory=list)
    stems: list[int] = field(default_factory=list)


def build(items: Sequence, dc: DecontamConfig) -> HashSetIndex:
    """Index the items' sequences (as `decontam.build_index_from_items` defines them)."""
    n, index = dc.ngram, HashSetIndex(dc)
    for idx, item in enumerate(items):
        stem = len(normalize(item.question).split())
        index.stems.append(stem)
        for k, seq in enumerate(item_sequences(item.question, item.choices, item.gold_text, n)):
            if len(seq) < n:
                index.wholes.setdefault(len(seq), {}).setdefault(tuple(seq), set()).add(idx)
                continue
            answer_seq = k == 1 and stem >= n
            tail = min(len(seq) - stem, MIN_ANSWER_WORDS)
            for i, gram in enumerate(windows(seq, n)):
                into_tail = i + n - stem
                kind = GRAM_STEM if into_tail <= 0 else 0
                if answer_seq and into_tail >= tail:
                    kind = GRAM_ANSWER
                owners = index.grams.setdefault(gram, {})
                owners[idx] = max(owners.get(idx, 0), kind)
    limit, totals = dc.max_item_frequency, [0] * len(items)
    tables = [index.grams, *index.wholes.values()]
    for table in tables:
        for gram, owners in table.items():
            if limit and len(owners) > limit:
                index.frequent.add(gram)
            else:
                for idx in owners:
                    totals[idx] += 1
    index.totals = totals
    return index


def _hits(index: HashSetIndex, toks: list[str]) -> dict[int, list[tuple[int, Gram, int]]]:
    """Per item: (position, gram, kind) of each n-gram of the record it owns; whole sequences
    with kind -1."""
    out: dict[int, list[tuple[int, Gram, int]]] = defaultdict(list)
    for pos, gram in enumerate(windows(toks, index.dc.ngram)):
        owners = index.grams.get(gram)
        if owners:
            for idx, kind in owners.items():
                out[idx].append((pos, gram, kind))
    for length, table in index.wholes.items():
        for pos, gram in enumerate(windows(toks, length)):
            for idx in table.get(gram, ()):
                out[idx].append((pos, gram, -1))
    return out


def _longest_run(
    index: HashSetIndex, hits: list[tuple[int, Gram, int]], stem: int
) -> tuple[int, bool]:
    """(words of the longest run of consecutive n-gram hits holding evidence, whether some
    such run holds every n-gram of the stem)."""
    n, best, whole_stem = index.dc.ngram, 0, False
    grams = sorted((p, g, k) for p, g, k in hits if k >= 0)
    i = 0
    while i < len(grams):
        j = i + 1
        while j < len(grams) and grams[j][0] == grams[j - 1][0] + 1:
            j += 1
        run = grams[i:j]
        if any(g not in index.frequent for _, g, _ in run):
            best = max(best, len(run) + n - 1)
            in_stem = sum(k == GRAM_STEM for _, _, k in run)
            whole_stem |= stem - n + 1 > 0 and in_stem >= stem - n + 1
        i = j
    return best, whole_stem


def removes(index: HashSetIndex, idx: int, hits: list[tuple[int, Gram, int]]) -> bool:
    """Whether the record's `hits` of item `idx` remove it (the rule of `decontam.decide`)."""
    dc, frequent = index.dc, index.frequent
    evidence = [(g, k) for _, g, k in hits if g not in frequent]
    if any(k == -1 for _, k in evidence) or any(k == GRAM_ANSWER for _, k in evidence):
        return True
    run, whole_stem = _longest_run(index, hits, index.stems[idx])
    if dc.min_contiguous_words and (run >= dc.min_contiguous_words or whole_stem):
        return True
    found = len({g for g, _ in evidence})
    return bool(found) and found / max(index.totals[idx], 1) >= dc.coverage


def contaminated(index: HashSetIndex, text: str) -> bool:
    """Whether `text` holds enough of one item; most texts leave at the `isdisjoint` screen."""
    toks = normalize(text).split()
    screened = index.grams.keys().isdisjoint(windows(toks, index.dc.ngram))
    if screened and all(t.keys().isdisjoint(windows(toks, n)) for n, t in index.wholes.items()):
        return False
    return any(removes(index, idx, hits) for idx, hits in _hits(index, toks).items())
