"""Render the shipped medical knowledge set into the tiny experiment's corpora and benchmarks.

`data/knowledge/facts.csv` holds a few hundred real, checkable medical facts (drug classes,
first-line treatments, causative organisms, deficiencies, genes, antidotes, innervation,
hormone sources, adverse effects). This script renders them, deterministically, into

- `data/tiny/corpora/`: training records in several real source schemas (Alpaca, ShareGPT,
  OpenAI messages, flashcards, MedQA-style MCQs), every fact in several phrasings of the
  *training* templates (so it is stored, not only memorised as one string), plus a few planted
  verbatim copies of benchmark items so decontamination has something true to find, and a few
  cards repeated across sources so exact deduplication does too;
- `data/tiny/benchmarks/`: held-out items in each benchmark's real schema (MedQA, MedMCQA,
  PubMedQA, HeadQA, MMLU subjects, USMLE), asking about the same facts in *other* words;
- `data/tiny/pretrain/`: documents about made-up subjects (statements, chat QA with every
  template, and raw-text exam items in the lm-eval prompt formats), so the tiny base model
  learns the language of the templates and how to answer exam items from stored knowledge, but
  none of the real facts (`med42ray.tiny.pretrain`, `model.tiny.pretrain`).

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
# relation -> more training phrasings (another statement, two more questions): a fact seen in
# several phrasings is stored so that other questions can reach it, not only the one it was
# seen with. Never the held-out question templates above.
EXTRA_TEMPLATES: dict[str, tuple[str, str, str]] = {
    "drug_class": (
        "{S} belongs to the {A} class of drugs.",
        "{S} is classified as what type of medication?",
        "Name the drug class of {s}.",
    ),
    "first_line": (
        "{S} is treated first with {A}.",
        "How is {s} treated initially?",
        "Name the initial therapy of choice for {s}.",
    ),
    "organism": (
        "The causative agent of {s} is {A}.",
        "{S} is an infection by which organism?",
        "Name the causative agent of {s}.",
    ),
    "deficiency": (
        "A deficiency of {A} causes {s}.",
        "{S} is due to a deficiency of what?",
        "Name the deficiency behind {s}.",
    ),
    "gene": (
        "The gene mutated in {s} is {A}.",
        "{S} is linked to mutations of which gene?",
        "Name the gene mutated in {s}.",
    ),
    "antidote": (
        "{S} toxicity is treated with the antidote {A}.",
        "How is {s} poisoning treated?",
        "Name the antidote for {s} poisoning.",
    ),
    "nerve": (
        "The nerve supply of the {s} is the {A}.",
        "What is the nerve supply of the {s}?",
        "Name the nerve of the {s}.",
    ),
    "hormone": (
        "{S} is produced by the {A}.",
        "Where is {s} produced?",
        "Name the source of {s}.",
    ),
    "side_effect": (
        "{S} can cause {A}.",
        "What side effect is {s} known for?",
        "Name a classic adverse effect of {s}.",
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
DUPLICATE_EVERY = 5  # every n-th flashcard also appears, verbatim, in the messages corpus


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


def distractors(
    fact: dict[str, str], facts: list[dict[str, str]], k: int, rng: random.Random | None = None
) -> list[str]:
    pool = sorted(
        {f["answer"] for f in facts if f["relation"] == fact["relation"]} - {fact["answer"]}
    )
    return (rng or stable_rng("distract", fact["id"])).sample(pool, k)


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
    """Training records for every fact in every source schema, each in its own phrasing."""
    corpora: dict[str, list[dict]] = defaultdict(list)
    for i, fact in enumerate(facts):
        statement, question, _ = TEMPLATES[fact["relation"]]
        statement2, question2, question3 = EXTRA_TEMPLATES[fact["relation"]]
        s1, s2 = fill(statement, fact), fill(statement2, fact)
        q1, q2, q3 = fill(question, fact), fill(question2, fact), fill(question3, fact)
        corpora["flashcards"].append({"question": q1, "answer": s1})
        corpora["alpaca"].append({"instruction": q2, "input": "", "output": s2})
        corpora["sharegpt"].append(
            {"conversations": [{"from": "human", "value": q3}, {"from": "gpt", "value": s1}]}
        )
        corpora["messages"].append(
            {
                "messages": [
                    {"role": "user", "content": f"Tell me a medical fact about {fact['subject']}."},
                    {"role": "assistant", "content": s2},
                ]
            }
        )
        if i % DUPLICATE_EVERY == 0:  # the same card again, as sources overlap in practice
            corpora["messages"].append(
                {
                    "messages": [
                        {"role": "user", "content": q1},
                        {"role": "assistant", "content": s1},
                    ]
                }
            )
        # exam-style short answers (lm-eval's "Question/Answer" layout): the answer text right
        # after "Answer:", as HeadQA-style items score it
        for q in (q1, q2):
            corpora["alpaca"].append(
                {
                    "instruction": f"Question: {q}",
                    "input": "",
                    "output": f"Answer: {fact['answer']}",
                }
            )
        # an exam-style item (lm-eval's "Question/Answer" layout) with its own distractors
        opts = distractors(fact, facts, 3, stable_rng("exam-distract", fact["id"]))
        gold = stable_rng("exam-gold", fact["id"]).randrange(4)
        opts.insert(gold, fact["answer"])
        listing = "\n".join(f"{LETTERS[j]}. {o}" for j, o in enumerate(opts))
        corpora["alpaca"].append(
            {
                "instruction": f"Question: {q3}\n{listing}",
                "input": "",
                "output": f"Answer: {LETTERS[gold]}",
            }
        )
        for variant, q in enumerate((q1, q2)):
            opts, gold = options_for(fact, facts, 4)
            rng = stable_rng("mcq-order", fact["id"], variant)
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
    "ra", "vo", "li", "ten", "mar", "qui", "sol", "dex", "pha", "nor",
    "tal", "zin", "cor", "bel", "mo", "gra", "fen", "lux", "pri", "sta",
]  # fmt: skip
PRETRAIN_ENTITIES = 20  # made-up subjects per relation (few, so each is seen many times)
SKILL_FRACTION = 0.75  # of them, those also asked about in exam formats (the rest: held out)
SYSTEM_PROMPT = "You are a helpful medical assistant created by M42 Health in the UAE."
MMLU_SUBJECT = {
    "first_line": "clinical knowledge",
    "deficiency": "college medicine",
    "gene": "medical genetics",
    "nerve": "anatomy",
    "hormone": "college biology",
    "side_effect": "college medicine",
    "antidote": "professional medicine",
    "organism": "professional medicine",
    "drug_class": "professional medicine",
}
EXAM_FORMATS = ("medqa", "usmle", "medmcqa", "mmlu", "headqa", "pubmedqa")
LETTER_FORMATS = ("medqa", "usmle", "medmcqa", "mmlu")


def pseudo_entity(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def pseudo_facts(facts: list[dict]) -> list[dict]:
    """Made-up subjects, each with one fixed answer from its relation's real answer pool."""
    rng = stable_rng("pseudo")
    taken = {f["subject"].lower() for f in facts}
    pseudo = []
    for relation in sorted(TEMPLATES):
        pool = sorted({f["answer"] for f in facts if f["relation"] == relation})
        for i in range(PRETRAIN_ENTITIES):
            name = pseudo_entity(rng)
            while name in taken:
                name = pseudo_entity(rng)
            taken.add(name)
            pseudo.append(
                {
                    "id": f"pseudo-{relation}-{i:03d}",
                    "relation": relation,
                    "subject": name,
                    "answer": rng.choice(pool),
                    "skill": i < round(PRETRAIN_ENTITIES * SKILL_FRACTION),
                }
            )
    return pseudo


def chat(user: str, assistant: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    }


def exam_text(
    fmt: str, fact: dict, pool: list[dict], rng: random.Random, gold: int | None = None
) -> str:
    """One raw-text exam item in an lm-eval prompt format, followed by its gold answer."""
    statement, question, test_question = TEMPLATES[fact["relation"]]
    q = fill(rng.choice([question, test_question]), fact)
    if fmt == "pubmedqa":
        true_claim = rng.random() < 0.5
        claimed = fact["answer"] if true_claim else distractors(fact, pool, 1, rng)[0]
        claim = fill(statement, {**fact, "answer": claimed})
        return (
            f"Abstract: We reviewed the literature on {fact['subject']}.\n"
            "Findings were summarised by two independent reviewers.\n"
            f"Question: Is it true that {claim[0].lower()}{claim[1:-1]}?\n"
            f"Answer: {'yes' if true_claim else 'no'}"
        )
    if fmt == "headqa":
        return f"Question: {q}\nAnswer: {fact['answer']}"
    n = 5 if fmt == "usmle" else 4
    opts = distractors(fact, pool, n - 1, rng)
    gold = rng.randrange(n) if gold is None else gold
    opts.insert(gold, fact["answer"])
    listing = "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(opts))
    if fmt == "mmlu":
        head = (
            "The following are multiple choice questions (with answers) about "
            f"{MMLU_SUBJECT[fact['relation']]}.\n\n{q}\n"
        )
    elif fmt == "medmcqa":
        head = f"Question: {q}\nChoices:\n"
    else:
        head = f"Question: {q}\n"
    return f"{head}{listing}Answer: {LETTERS[gold]}"


def pretrain_records(facts: list[dict]) -> list[dict]:
    """Documents about made-up subjects: the template language and the exam skill, no real fact.

    Every made-up subject is stated in chat records (the fine-tuning corpora's language, with
    the training and the held-out question templates). Most of them are also asked about in
    raw-text exam documents in the lm-eval prompt formats, always in a document of their own,
    so the model learns to answer exam items from what it stored from *other* documents: the
    skill a fine-tune on real statements needs to show on the held-out benchmark items.
    """
    rng = stable_rng("pretrain")
    pseudo = pseudo_facts(facts)
    records: list[dict] = []
    for fact in pseudo:
        statement, question, test_question = TEMPLATES[fact["relation"]]
        answer = fill(statement, fact)
        records.append(chat(fill(question, fact), answer))
        records.append(chat(fill(test_question, fact), answer))
        records.append({"text": answer})
        statement2, question2, question3 = EXTRA_TEMPLATES[fact["relation"]]
        records.append(chat(fill(question2, fact), fill(statement2, fact)))
        records.append(chat(fill(question3, fact), answer))
        opts = distractors(fact, pseudo, 3, rng)
        gold = rng.randrange(4)
        opts.insert(gold, fact["answer"])
        listing = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
        records.append(
            chat(f"{fill(question, fact)}\n\n{listing}", f"{LETTERS[gold]}. {fact['answer']}")
        )
        # the fine-tuning corpora's exam-style short answer, in chat form and in raw text
        records.append(chat(f"Question: {fill(question2, fact)}", f"Answer: {fact['answer']}"))
        if fact["skill"]:
            records.append({"text": f"Question: {fill(question, fact)}\nAnswer: {fact['answer']}"})
            for fmt in rng.sample(EXAM_FORMATS, 3):
                records.append({"text": exam_text(fmt, fact, pseudo, rng)})
            # letter items with the gold answer at every position (fresh distractors each), so
            # the letter is learned by matching options to the stored answer, not per document;
            # half of them (a curriculum) also state the fact in the same context
            stated = set(rng.sample(range(4), 2))
            for gold in range(4):
                fmt = rng.choice(LETTER_FORMATS)
                item = exam_text(fmt, fact, pseudo, rng, gold=gold)
                if gold in stated:
                    item = f"{answer}\n{item}"
                records.append({"text": item})
            item = exam_text("medqa", fact, pseudo, rng)
            cut = item.rindex("\nAnswer:")
            records.append(chat(item[:cut], item[cut + 1 :]))
    rng.shuffle(records)
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
