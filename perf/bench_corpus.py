"""The synthetic corpus of `perf/data_bench.py`: instruction records of realistic length, a
MedQA-schema benchmark file, planted contaminations and planted near-duplicates.

Words are made-up syllable words drawn from a Zipf law (35% from a short list of common
English/exam words), so n-gram frequencies look like text while no real fact is needed. Each
record is a user turn of 40-120 words and an assistant turn of 60-160 (about 200 words). A
`contam_rate` share of records hold a benchmark item (its stem + options verbatim, its stem
inside a longer instruction, or its stem re-cased and re-punctuated; distinct items), and a
`dup_rate` share are near copies of an earlier record (re-cased, one word replaced, or a few
words appended: Jaccard of 5-word shingles >= 0.9, far above the 0.8 threshold, while unrelated
records share almost none, so every correct MinHash-LSH finds the very same pairs).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SYLLABLES = "ab ca de fi go hu ka le mi no pa qui ro sa te vu xa yo ze tri pro cor neu hep nal lin"
_COMMON = (
    "the a of and in to with is was for on patient which following most likely her his "
    "history presents year old man woman examination shows blood pressure mg dl"
)
COMMON = _COMMON.split()
FILES = 16


def make_vocab(seed: int = 0, size: int = 6000) -> list[str]:
    """`size` distinct made-up words of 2-4 syllables."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES.split()) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class Words:
    """Draws sentences of Zipf-distributed words; vectorised per call."""

    def __init__(self, vocab: list[str], seed: int):
        self.rng = np.random.default_rng(seed)
        self.vocab = np.asarray(vocab, dtype=object)
        self.common = np.asarray(COMMON, dtype=object)

    def sentences(self, lengths: np.ndarray) -> list[str]:
        """One sentence per entry of `lengths` (words)."""
        total = int(lengths.sum())
        idx = np.minimum(self.rng.zipf(1.3, total) - 1, len(self.vocab) - 1)
        common = self.rng.random(total) < 0.35
        words = np.where(common, self.common[idx % len(self.common)], self.vocab[idx])
        cuts = np.concatenate([[0], np.cumsum(lengths)])
        return [" ".join(words[a:b]) for a, b in itertools.pairwise(cuts.tolist())]


def make_items(path: Path, n_items: int, vocab: list[str], seed: int) -> None:
    """A MedQA-schema JSONL file of `n_items` items: stems of 35-90 words, four short options."""
    words = Words(vocab, seed)
    rng = np.random.default_rng(seed + 1)
    stems = words.sentences(rng.integers(35, 90, n_items))
    opts = words.sentences(rng.integers(1, 5, 4 * n_items))
    with path.open("w") as fh:
        for i, stem in enumerate(stems):
            row = {
                "id": f"q{i}",
                "question": stem.capitalize() + "?",
                "options": dict(zip("ABCD", opts[4 * i : 4 * i + 4], strict=True)),
                "answer_idx": "ABCD"[i % 4],
            }
            fh.write(json.dumps(row) + "\n")


def contaminate(item: Any, user: str, kind: int) -> str:
    """A user turn holding benchmark `item`: verbatim with options, embedded, or re-cased."""
    if kind == 0:
        labelled = (f"{lab}. {c}" for lab, c in zip(item.labels, item.choices, strict=True))
        return item.question + "\n" + "\n".join(labelled)
    if kind == 1:
        return f"{user} Consider this case: {item.question} Explain."
    return item.question.upper().replace(" ", "  ").replace("?", " ...")


def near_copy(
    user: str, answer: str, kind: int, rng: random.Random, vocab: list[str]
) -> tuple[str, str]:
    """A near copy of a record: re-cased, one answer word replaced, or three words appended."""
    if kind == 0:
        return user.upper(), answer.replace(" ", "  ") + "!"
    words = answer.split()
    if kind == 1:
        words[rng.randrange(len(words))] = rng.choice(vocab)
        return user, " ".join(words)
    return user, answer + " thank you doctor"


def make_corpus(
    folder: Path,
    n: int,
    items: list[Any],
    vocab: list[str],
    seed: int,
    contam_rate: float = 0.01,
    dup_rate: float = 0.01,
) -> dict:
    """`FILES` Parquet files of `sources.RECORD_SCHEMA` rows, and what was planted: the ids of
    contaminated records and the planted near-duplicate pairs (original id, copy id)."""
    from med42ray.data.sources import RECORD_SCHEMA

    words, prng = Words(vocab, seed), random.Random(seed)
    item_order = list(range(len(items)))
    prng.shuffle(item_order)
    planted: set[str] = set()
    pairs: list[tuple[str, str]] = []
    contaminations = 0
    per_file = -(-n // FILES)
    for f in range(FILES):
        rows = max(0, min(per_file, n - f * per_file))
        rng = words.rng
        users = words.sentences(rng.integers(40, 120, rows))
        answers = words.sentences(rng.integers(60, 160, rows))
        ids = [f"bench:{f}:{row}" for row in range(rows)]
        for row in range(rows):
            if prng.random() < contam_rate:
                item = items[item_order[contaminations % len(items)]]
                contaminations += 1
                users[row] = contaminate(item, users[row], prng.randrange(3))
                planted.add(ids[row])
            elif row > 0 and prng.random() < dup_rate:
                src = prng.randrange(row)
                users[row], answers[row] = near_copy(
                    users[src], answers[src], prng.randrange(3), prng, vocab
                )
                pairs.append((ids[src], ids[row]))
                if ids[src] in planted:  # a copy of a contaminated record is one too
                    planted.add(ids[row])
        cols = {
            "id": ids,
            "source": ["bench"] * rows,
            "source_file": [f"part-{f}"] * rows,
            "row": list(range(rows)),
            "order": [f * per_file + r for r in range(rows)],
            "messages": [
                [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
                for u, a in zip(users, answers, strict=True)
            ],
            **{c: [""] * rows for c in ("drop", "reason", "detail", "dkey")},
        }
        table = pa.Table.from_pydict(cols, schema=RECORD_SCHEMA)
        pq.write_table(table, folder / f"part-{f:03d}.parquet")
    return {"contaminated": sorted(planted), "near_pairs": pairs}


def text_view(corpus: Path, out: Path) -> None:
    """The corpus as datatrove reads it: Parquet files of `id` and `text` (all turns,
    newline-joined: the text both decontaminations match)."""
    from med42ray.data.decontam import joined_contents

    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(corpus.glob("*.parquet")):
        table = pq.read_table(path, columns=["id", "messages"])
        text = joined_contents(table.column("messages").combine_chunks())
        pq.write_table(pa.table({"id": table.column("id"), "text": text}), out / path.name)


def item_docs(items: list, path: Path) -> None:
    """The benchmark items as datatrove's n-gram indexer takes documents: per item its stem as
    `query` and, as labels, its options joined and its gold answer: the query + label n-grams
    are then exactly the n-grams of our two indexed sequences (stem + options, stem + gold)."""
    with path.open("w") as fh:
        for item in items:
            labels = [" ".join(item.choices), item.gold_text]
            fh.write(json.dumps({"id": item.id, "query": item.question, "labels": labels}) + "\n")
