"""Render the shipped medical knowledge set into the tiny experiment's corpora and benchmarks.

`data/knowledge/facts.csv` holds a few hundred real, checkable medical facts (drug classes,
first-line treatments, causative organisms, deficiencies, genes, antidotes, innervation,
hormone sources, adverse effects). This script renders them, deterministically, into

- `data/tiny/corpora/`: training records in several real source schemas (Alpaca, ShareGPT,
  OpenAI messages, flashcards, MedQA-style MCQs), phrased with the *training* templates, plus a
  few planted verbatim copies of benchmark items so decontamination has something true to find;
- `data/tiny/benchmarks/`: held-out items in each benchmark's real schema (MedQA, MedMCQA,
  PubMedQA, HeadQA, MMLU subjects, USMLE), asking about the same facts in *other* words;
- `data/tiny/pretrain/`: generic text from the same templates about made-up entities, so the
  tiny base model learns the language of the templates but none of the facts.

Run: `.venv/bin/python scripts/make_tiny_data.py` (a test checks the shipped files are current).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "data" / "knowledge" / "facts.csv"
OUT = ROOT / "data" / "tiny"
SEED = 42
LETTERS = "ABCDE"

# relation -> (training statement, training question, held-out test question)
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "drug_class": (
        "{S} is a {A}.",
        "What class of drug is {S}?",
        "To which pharmacological class does {s} belong?",
    ),
    "first_line": (
        "The first-line treatment for {s} is {A}.",
        "What is the first-line treatment for {s}?",
        "A patient is diagnosed with {s}. Which therapy is the most appropriate initial choice?",
    ),
    "organism": (
        "{S} is caused by {A}.",
        "What organism causes {s}?",
        "Which pathogen is responsible for {s}?",
    ),
    "deficiency": (
        "{S} results from a deficiency of {A}.",
        "What deficiency causes {s}?",
        "A lack of which nutrient leads to {s}?",
    ),
    "gene": (
        "{S} is caused by mutations in {A}.",
        "Which gene is mutated in {s}?",
        "Mutations in which gene underlie {s}?",
    ),
    "antidote": (
        "The antidote for {s} toxicity is {A}.",
        "What is the antidote for {s}?",
        "A patient presents with a toxic ingestion of {s}. Which agent reverses it?",
    ),
    "nerve": (
        "The {s} is innervated by the {A}.",
        "Which nerve innervates the {s}?",
        "Injury to which nerve would paralyse the {s}?",
    ),
    "hormone": (
        "{S} is secreted by the {A}.",
        "What secretes {s}?",
        "Which cells or organ produce {s}?",
    ),
    "side_effect": (
        "A classic adverse effect of {s} is {A}.",
        "What is a classic adverse effect of {s}?",
        "Which adverse effect is characteristic of {s}?",
    ),
}
# which benchmark asks about which relation (each fact is tested by exactly one benchmark)
BENCHMARK_OF: dict[str, list[str]] = {
    "drug_class": ["medmcqa", "headqa"],
    "first_line": ["medqa", "mmlu_clinical_knowledge", "mmlu_professional_medicine"],
    "organism": ["medmcqa", "headqa", "usmle_sample_exam"],
    "deficiency": ["mmlu_college_medicine", "pubmedqa"],
    "gene": ["mmlu_medical_genetics", "usmle_self_assessment"],
    "antidote": ["medqa", "usmle_sample_exam", "pubmedqa"],
    "nerve": ["mmlu_anatomy"],
    "hormone": ["mmlu_college_biology", "usmle_self_assessment"],
    "side_effect": ["medmcqa", "mmlu_college_medicine", "headqa"],
}
PLANTED_CONTAMINATIONS = 6


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def fill(template: str, fact: dict[str, str]) -> str:
    return template.format(S=cap(fact["subject"]), s=fact["subject"], A=fact["answer"])


def stable_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, (SEED, *parts))).encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def load_facts() -> list[dict[str, str]]:
    with FACTS.open(newline="", encoding="utf-8") as fh:
        facts = list(csv.DictReader(fh))
    for i, fact in enumerate(facts):
        fact["id"] = f"{fact['relation']}-{i:03d}"
    return facts


def distractors(fact: dict[str, str], facts: list[dict[str, str]], k: int) -> list[str]:
    pool = sorted(
        {f["answer"] for f in facts if f["relation"] == fact["relation"]} - {fact["answer"]}
    )
    return stable_rng("distract", fact["id"]).sample(pool, k)


def options_for(fact: dict[str, str], facts: list[dict[str, str]], n: int) -> tuple[list, int]:
    """`n` option texts with the answer at a seeded position; returns (options, gold index)."""
    opts = distractors(fact, facts, n - 1)
    gold = stable_rng("gold", fact["id"]).randrange(n)
    opts.insert(gold, fact["answer"])
    return opts, gold


# ------------------------------------------------------------------------------- benchmarks
def benchmark_record(task: str, fact: dict, facts: list, index: int) -> dict:
    """One held-out item in `task`'s real schema."""
    question = fill(TEMPLATES[fact["relation"]][2], fact)
    if task == "pubmedqa":
        true_claim = stable_rng("pmqa", fact["id"]).random() < 0.5
        claimed = fact["answer"] if true_claim else distractors(fact, facts, 1)[0]
        statement = fill(TEMPLATES[fact["relation"]][0], {**fact, "answer": claimed})
        return {
            "pubid": 90000 + index,
            "question": f"Is it true that {statement[0].lower()}{statement[1:-1]}?",
            "context": {
                "contexts": [
                    f"We reviewed the literature on {fact['subject']}.",
                    "Findings were summarised by two independent reviewers.",
                ],
                "labels": ["BACKGROUND", "METHODS"],
                "meshes": [],
            },
            "long_answer": statement
            if true_claim
            else f"No. {fill(TEMPLATES[fact['relation']][0], fact)}",
            "final_decision": "yes" if true_claim else "no",
        }
    n = 5 if task.startswith("usmle") else 4
    opts, gold = options_for(fact, facts, n)
    if task == "medqa":
        return {
            "question": question,
            "answer": opts[gold],
            "options": dict(zip(LETTERS, opts, strict=False)),
            "meta_info": "step1",
            "answer_idx": LETTERS[gold],
        }
    if task == "medmcqa":
        return {
            "id": f"tiny-{fact['id']}",
            "question": question,
            "opa": opts[0],
            "opb": opts[1],
            "opc": opts[2],
            "opd": opts[3],
            "cop": gold,
            "choice_type": "single",
            "exp": fill(TEMPLATES[fact["relation"]][0], fact),
            "subject_name": fact["relation"],
            "topic_name": None,
        }
    if task == "headqa":
        return {
            "name": "tiny",
            "year": "2026",
            "category": fact["relation"],
            "qid": index,
            "qtext": question,
            "ra": gold + 1,
            "image": None,
            "answers": [{"aid": i + 1, "atext": t} for i, t in enumerate(opts)],
        }
    if task.startswith("mmlu_"):
        return {
            "question": question,
            "subject": task.removeprefix("mmlu_"),
            "choices": opts,
            "answer": gold,
        }
    if task.startswith("usmle_"):
        return {
            "id": f"{task}-{index}",
            "question": question,
            "options": dict(zip(LETTERS, opts, strict=True)),
            "answer_idx": LETTERS[gold],
            "step": ["1", "2ck", "3"][index % 3],
            "has_image": False,
        }
    raise ValueError(task)


def assign_benchmarks(facts: list[dict]) -> dict[str, list[dict]]:
    by_task: dict[str, list[dict]] = defaultdict(list)
    counters: dict[str, int] = defaultdict(int)
    for fact in facts:
        tasks = BENCHMARK_OF[fact["relation"]]
        task = tasks[counters[fact["relation"]] % len(tasks)]
        counters[fact["relation"]] += 1
        by_task[task].append(fact)
    return by_task


# ---------------------------------------------------------------------------------- corpora
def corpus_records(facts: list[dict]) -> dict[str, list[dict]]:
    """Training records for every fact, spread across the source schemas."""
    corpora: dict[str, list[dict]] = defaultdict(list)
    for i, fact in enumerate(facts):
        statement, question, _ = TEMPLATES[fact["relation"]]
        answer = fill(statement, fact)
        q = fill(question, fact)
        corpora["flashcards"].append({"question": q, "answer": answer})
        match i % 4:
            case 0:
                corpora["alpaca"].append({"instruction": q, "input": "", "output": answer})
            case 1:
                corpora["sharegpt"].append(
                    {
                        "conversations": [
                            {"from": "human", "value": q},
                            {"from": "gpt", "value": answer},
                        ]
                    }
                )
            case 2:
                corpora["messages"].append(
                    {
                        "messages": [
                            {"role": "user", "content": q},
                            {"role": "assistant", "content": answer},
                        ]
                    }
                )
            case 3:
                corpora["alpaca"].append(
                    {"instruction": "Answer the medical question.", "input": q, "output": answer}
                )
        opts, gold = options_for(fact, facts, 4)
        rng = stable_rng("mcq-order", fact["id"])
        rng.shuffle(opts)
        gold = opts.index(fact["answer"])
        corpora["medqa_train"].append(
            {
                "question": q,
                "answer": fact["answer"],
                "options": dict(zip(LETTERS, opts, strict=False)),
                "meta_info": "train",
                "answer_idx": LETTERS[gold],
            }
        )
    return corpora


def plant_contaminations(corpora: dict[str, list[dict]], benchmarks: dict[str, list[dict]]):
    """Copy a few held-out benchmark questions verbatim into the Alpaca corpus."""
    picked = []
    for task in (
        "medqa",
        "mmlu_clinical_knowledge",
        "medmcqa",
        "headqa",
        "usmle_sample_exam",
        "mmlu_anatomy",
    )[:PLANTED_CONTAMINATIONS]:
        rec = benchmarks[task][0]
        question = rec.get("question") or rec.get("qtext")
        corpora["alpaca"].append(
            {
                "instruction": question,
                "input": "",
                "output": "See the explanation in the review book.",
            }
        )
        picked.append(task)
    return picked


# --------------------------------------------------------------------------------- pretrain
SYLLABLES = [
    "ra",
    "vo",
    "li",
    "ten",
    "mar",
    "qui",
    "sol",
    "dex",
    "pha",
    "nor",
    "tal",
    "zin",
    "cor",
    "bel",
    "mo",
    "gra",
    "fen",
    "lux",
    "pri",
    "sta",
]


def pseudo_entity(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def pretrain_records(facts: list[dict], n: int = 1200) -> list[dict]:
    """Template language with made-up subjects: the format, never a real fact."""
    rng = stable_rng("pretrain")
    answers = defaultdict(list)
    for fact in facts:
        answers[fact["relation"]].append(fact["answer"])
    records = []
    relations = sorted(TEMPLATES)
    for i in range(n):
        relation = relations[i % len(relations)]
        fake = {"subject": pseudo_entity(rng), "answer": rng.choice(answers[relation])}
        statement, question, test_question = TEMPLATES[relation]
        q = fill([question, test_question][i % 2], fake)
        records.append(
            {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": fill(statement, fake)},
                ]
            }
        )
    return records


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def main(out: Path = OUT) -> None:
    facts = load_facts()
    by_task = assign_benchmarks(facts)
    benchmarks = {
        task: [benchmark_record(task, f, facts, i) for i, f in enumerate(fs)]
        for task, fs in sorted(by_task.items())
    }
    corpora = corpus_records(facts)
    plant_contaminations(corpora, benchmarks)
    for task, rows in benchmarks.items():
        write_jsonl(out / "benchmarks" / f"{task}.jsonl", rows)
    for name, rows in sorted(corpora.items()):
        write_jsonl(out / "corpora" / f"{name}.jsonl", rows)
    write_jsonl(out / "pretrain" / "pretrain.jsonl", pretrain_records(facts))
    counts = {k: len(v) for k, v in benchmarks.items()}
    print(
        f"{len(facts)} facts; benchmarks {counts}; corpora "
        f"{ {k: len(v) for k, v in corpora.items()} }"
    )


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
