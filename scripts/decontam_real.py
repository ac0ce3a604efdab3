"""False positives and planted leaks of the decontamination rule, on real exam questions.

No MedQA/MedMCQA training split ships offline, so disjoint seeded halves of the real test/dev
sets (`data/real/`) play "training data" and "benchmark": distinct questions of one half are
turned into training records the way the data stage builds them (`item_chat`, the system
prompt, all turns newline-joined) and matched against the index of the other half; any removal
is a false positive. Also MedMCQA dev against the MedQA test index (cross-benchmark). Planted
leaks (real items copied verbatim, re-cased, options shuffled and relabelled, embedded, as an
Alpaca record, one stem sentence dropped) must all be caught. The default rule and the old one
(any shared n-gram, no frequency exclusion) run side by side.

    .venv/bin/python scripts/decontam_real.py --json /tmp/decontam_real.json [--sweep]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from med42ray.benchmarks import BenchmarkItem, load_benchmark  # noqa: E402
from med42ray.config import MED42_SYSTEM_PROMPT, DecontamConfig  # noqa: E402
from med42ray.data.adapters import item_chat, to_messages  # noqa: E402
from med42ray.data.decontam import build_index_from_items, match_batch  # noqa: E402
from med42ray.data.text import normalize  # noqa: E402

REAL = ROOT / "data" / "real"
MEDQA = REAL / "medqa/data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl"
MEDMCQA = REAL / "medmcqa/data/dev.json"
OLD_RULE = DecontamConfig(min_coverage=0.0, min_contiguous_words=0, max_item_frequency=0)
BATCH = 512


def distinct(items: Sequence[BenchmarkItem]) -> list[BenchmarkItem]:
    """Items with distinct questions: normalised stem plus the set of options."""
    seen: dict[tuple, BenchmarkItem] = {}
    for item in items:
        key = (normalize(item.question), frozenset(normalize(c) for c in item.choices))
        seen.setdefault(key, item)
    return list(seen.values())


def halves(items: Sequence[BenchmarkItem], seed: int) -> tuple[list, list]:
    """A seeded split of `items` into (training half, benchmark half)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    mid = len(order) // 2
    return [items[i] for i in order[mid:]], [items[i] for i in order[:mid]]


def join(messages: Sequence[dict]) -> str:
    """A record's text as the data stage matches it: every turn, newline-joined."""
    return "\n".join(m["content"] for m in messages)


def record_text(item: BenchmarkItem) -> str:
    """`item` as a training record of the data stage (benchmark schema, system prompt)."""
    return join([{"role": "system", "content": MED42_SYSTEM_PROMPT}, *item_chat(item)])


# ---------------------------------------------------------------------------- planted leaks
def _listing(choices: Sequence[str], labels: Sequence[str], sep: str = ". ") -> str:
    return "\n".join(f"{lab}{sep}{c}" for lab, c in zip(labels, choices, strict=True))


def _recased(item: BenchmarkItem, rng: random.Random) -> str:
    q = re.sub(r"[,.;:]", lambda m: rng.choice(["", " -", " ;", "  "]), item.question)
    q = "".join(ch.upper() if rng.random() < 0.5 else ch.lower() for ch in q)
    return f"{q}\n{_listing(item.choices, 'abcd'[: len(item.choices)], ') ')}\n{item.gold_text}"


def _shuffled(item: BenchmarkItem, rng: random.Random) -> str:
    order = list(range(len(item.choices)))
    rng.shuffle(order)
    choices = [item.choices[i] for i in order]
    labels = [str(k + 1) for k in range(len(choices))]
    gold = order.index(item.gold)
    answer = f"Answer: {labels[gold]}) {item.gold_text}"
    return f"{item.question}\n{_listing(choices, labels, ') ')}\n{answer}"


def _embedded(item: BenchmarkItem, _rng: random.Random) -> str:
    head = (
        "You are tutoring a medical student preparing for the licensing exam. Read the vignette "
        "below carefully, reason step by step about the physiology involved, and then explain "
        "why each option is right or wrong before you give the final answer.\n\n"
    )
    tail = "\n\nKeep the explanation under two hundred words and cite one textbook chapter."
    return record_text(item).replace(item.question, head + item.question + tail)


def _alpaca(item: BenchmarkItem, _rng: random.Random) -> str:
    rec = {
        "instruction": f"{item.question}\n{_listing(item.choices, item.labels)}",
        "input": "",
        "output": f"The answer is {item.gold_text}.",
    }
    return join(to_messages("alpaca", rec, MED42_SYSTEM_PROMPT))


def _sentence_dropped(item: BenchmarkItem, _rng: random.Random) -> str:
    sents = re.split(r"(?<=[.!?])\s+", item.question.strip())
    keep = sents[: len(sents) // 2] + sents[len(sents) // 2 + 1 :]  # drop a middle one
    return record_text(item).replace(item.question, " ".join(keep))


PLANTED: dict[str, Callable[[BenchmarkItem, random.Random], str]] = {
    "verbatim": lambda item, _rng: record_text(item),
    "recased_repunctuated": _recased,
    "options_shuffled_relabelled": _shuffled,
    "embedded_in_instruction": _embedded,
    "alpaca_with_gold": _alpaca,
    "stem_sentence_dropped": _sentence_dropped,
}


def plantable(items: Sequence[BenchmarkItem], k: int, seed: int) -> list[BenchmarkItem]:
    """`k` seeded items with a stem of at least three sentences (one can be dropped)."""
    ok = [i for i in items if len(re.split(r"(?<=[.!?])\s+", i.question.strip())) >= 3]
    return random.Random(seed).sample(ok, min(k, len(ok)))


def planted_texts(items: Sequence[BenchmarkItem], seed: int) -> list[tuple[str, str, str]]:
    """(form, item id, text) of every planted form of every item."""
    rng = random.Random(seed)
    return [(form, item.id, make(item, rng)) for item in items for form, make in PLANTED.items()]


# ---------------------------------------------------------------------------- measurement
def matches(index, texts: Sequence[str]) -> list:
    out = []
    for lo in range(0, len(texts), BATCH):
        out += match_batch(index, texts[lo : lo + BATCH])
    return out


def false_positives(dc: DecontamConfig, train: Sequence, bench: Sequence, spans: int = 5) -> dict:
    """Records of `train` (distinct real questions, none a copy of `bench`) removed by `dc`."""
    index = build_index_from_items(bench, dc)
    found = [m for m in matches(index, [record_text(i) for i in train]) if m is not None]
    return {
        "questions": len(train),
        "removed": len(found),
        "rate": round(len(found) / max(len(train), 1), 4),
        "by_method": dict(Counter(m.method for m in found)),
        "excluded_frequent_ngrams": index.excluded,
        "spans": [
            {"span": m.span[:160], "method": m.method, "share": round(m.share, 3)}
            for m in found[:spans]
        ],
    }


def planted(dc: DecontamConfig, bench: Sequence, items: Sequence, seed: int) -> dict:
    """How many planted forms of `items` (all in `bench`) the rule catches, per form."""
    index = build_index_from_items(bench, dc)
    cases = planted_texts(items, seed)
    got = matches(index, [text for _, _, text in cases])
    caught = Counter(f for (f, iid, _), m in zip(cases, got, strict=True) if m and m.item_id == iid)
    missed = [
        (f, iid) for (f, iid, _), m in zip(cases, got, strict=True) if not m or m.item_id != iid
    ]
    shares = [m.share for m in got if m is not None]
    return {
        "items": len(items),
        "caught": sum(caught.values()),
        "total": len(cases),
        "per_form": {form: caught.get(form, 0) for form in PLANTED},
        "missed": missed[:20],
        "by_method": dict(Counter(m.method for m in got if m is not None)),
        "min_share": round(min(shares), 3) if shares else None,
    }


def measure(dc: DecontamConfig, sets: dict, plant: list, seed: int) -> dict:
    """False positives on every (training, benchmark) pair of `sets` and the planted leaks."""
    out = {name: false_positives(dc, tr, be) for name, (tr, be) in sets.items()}
    out["planted"] = planted(dc, sets["medqa_halves"][1], plant, seed)
    return out


def load_sets(seed: int) -> dict:
    """(training, benchmark) pairs: MedQA halves, MedMCQA halves, MedMCQA dev vs MedQA test."""
    medqa = distinct(load_benchmark("medqa", str(MEDQA)))
    medmcqa = distinct(load_benchmark("medmcqa", str(MEDMCQA)))
    return {
        "medqa_halves": halves(medqa, seed),
        "medmcqa_halves": halves(medmcqa, seed),
        "medmcqa_vs_medqa": (medmcqa, medqa),
    }


def sweep(sets: dict, plant: list, seed: int) -> list[dict]:
    """FP rate (MedQA halves, MedMCQA halves) and planted catches over the rule's parameters."""
    rows = []
    for freq in (0, 2, 5, 10):
        for cov in (0.0, 0.1, 0.2, 0.3, 0.5):
            for contig in (0, 50):
                dc = DecontamConfig(
                    max_item_frequency=freq, min_coverage=cov, min_contiguous_words=contig
                )
                fp = {k: false_positives(dc, *sets[k])["rate"] for k in sets}
                pl = planted(dc, sets["medqa_halves"][1], plant, seed)
                row = {"max_item_frequency": freq, "min_coverage": cov, "min_contiguous": contig}
                rows.append({**row, **fp, "planted": f"{pl['caught']}/{pl['total']}"})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def removal_ratios(new: dict, old: dict) -> dict[str, float]:
    """Per set, distinct real questions the default rule removes per one the old rule removes
    (`default_vs_any_ngram_<set>`; lower is better, 0 when neither removes any)."""
    return {
        f"default_vs_any_ngram_{name}": (
            round(new[name]["removed"] / old[name]["removed"], 4) if old[name]["removed"] else 0.0
        )
        for name in new
        if isinstance(new[name], dict) and "removed" in new[name] and name in old
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--planted", type=int, default=30, help="real items planted per form")
    ap.add_argument("--sweep", action="store_true", help="also sweep the rule's parameters")
    args = ap.parse_args(argv)
    sets = load_sets(args.seed)
    plant = plantable(sets["medqa_halves"][1], args.planted, args.seed)
    default = DecontamConfig()
    report = {
        "defaults": default.model_dump(
            include={"ngram", "min_coverage", "min_contiguous_words", "max_item_frequency"}
        ),
        "default_rule": measure(default, sets, plant, args.seed),
        "old_rule": measure(OLD_RULE, sets, plant, args.seed),
    }
    report["ratios"] = removal_ratios(report["default_rule"], report["old_rule"])
    if args.sweep:
        report["sweep"] = sweep(sets, plant, args.seed)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
