"""Build a hub mirror for the tests: `datasets/<owner>/<name>/` folders laid out as the hub
repositories are (Parquet files per config and split, a README.md dataset card whose `configs:`
section maps them), filled from the real release files in `data/real/` and a few chat rows
written by us, so the code path that reads a hub repository is the one under test."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
TINY_CORPORA = Path(__file__).resolve().parents[1] / "data" / "tiny" / "corpora"
#: The hub's chat-style training repositories the paper recipes read (alpaca schema).
CHAT_REPOS = (
    "medalpaca/medical_meadow_medical_flashcards",
    "medalpaca/medical_meadow_wikidoc",
    "lavita/ChatDoctor-HealthCareMagic-100k",
)
MMLU_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
CHAT_ROWS = [
    {"instruction": "Answer the question.", "input": "What does HbA1c measure?",
     "output": "Average blood glucose over about three months."},
    {"instruction": "Answer the question.", "input": "Name a loop diuretic.",
     "output": "Furosemide."},
]  # fmt: skip


def place_usmle_files(root: Path) -> Path:
    """`root` with the paper recipes' local USMLE files in place (`data/usmle/`): the fixtures
    in their published forms (medAlpaca's folder, a sample-exam JSONL)."""
    usmle = root / "data" / "usmle"
    shutil.copytree(
        REAL.parents[1] / "tests" / "fixtures" / "forms" / "usmle_medalpaca",
        usmle / "self_assessment",
    )
    shutil.copy(
        REAL.parents[1] / "data" / "tiny" / "benchmarks" / "usmle_sample_exam.jsonl",
        usmle / "sample_exam.jsonl",
    )
    return root


def write_repo(root: Path, repo: str, configs: dict[str, dict[str, list[dict[str, Any]]]]) -> Path:
    """`root/datasets/<repo>`: one Parquet file per config and split, and the card."""
    folder = root / "datasets" / repo
    card = []
    for config, splits in configs.items():
        files = []
        for split, rows in splits.items():
            rel = f"{config}/{split}-00000-of-00001.parquet"
            (folder / config).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), folder / rel)
            files.append({"split": split, "path": rel})
        card.append({"config_name": config, "data_files": files})
    (folder / "README.md").write_text(
        "---\n" + yaml.safe_dump({"configs": card}, sort_keys=False) + "---\n# mirror\n"
    )
    return folder


def mmlu_rows(subject: str) -> list[dict[str, Any]]:
    """cais/mmlu rows from the original header-less CSV."""
    path = REAL / "mmlu" / "data" / "test" / f"{subject}_test.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            {"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(x)}
            for q, a, b, c, d, x in csv.reader(fh)
        ]


def medmcqa_rows() -> list[dict[str, Any]]:
    """openlifescienceai/medmcqa validation rows (0-based cop) from the original dev.json."""
    rows = []
    for line in (REAL / "medmcqa" / "data" / "dev.json").read_text().splitlines():
        rec = json.loads(line)
        rows.append({**rec, "cop": rec["cop"] - 1, "exp": rec["exp"] or ""})
    return rows


def pubmedqa_rows() -> list[dict[str, Any]]:
    """qiaojin/PubMedQA pqa_labeled rows (1,000) from the original ori_pqal.json."""
    doc = json.loads((REAL / "pubmedqa" / "data" / "ori_pqal.json").read_text())
    return [
        {
            "pubid": int(pmid),
            "question": v["QUESTION"],
            "context": {"contexts": v["CONTEXTS"], "labels": v["LABELS"], "meshes": v["MESHES"]},
            "long_answer": v["LONG_ANSWER"],
            "final_decision": v["final_decision"],
        }
        for pmid, v in doc.items()
    ]


def headqa_rows() -> list[dict[str, Any]]:
    """EleutherAI/headqa `en` test rows from the original nested HEAD_EN test file."""
    doc = json.loads((REAL / "headqa" / "data" / "HEAD_EN" / "test_HEAD_EN.json").read_text())
    return [
        {"name": name, "year": exam["year"], "category": exam["category"],
         "qid": int(q["qid"]), "qtext": q["qtext"], "ra": int(q["ra"]), "image": q["image"],
         "answers": q["answers"]}
        for name, exam in doc["exams"].items()
        for q in exam["data"]
    ]  # fmt: skip


def corpus_chat_rows() -> dict[str, list[dict[str, Any]]]:
    """Rows for `CHAT_REPOS` with enough text to train a few steps, made from the tiny corpora
    (made-up subjects, no benchmark item): the flashcards in medalpaca's flashcard form
    (instruction, question as input, answer as output), the Alpaca records split in two."""
    cards = [
        {"instruction": "Answer this question truthfully", "input": r["question"],
         "output": r["answer"]}
        for r in map(json.loads, (TINY_CORPORA / "flashcards.jsonl").read_text().splitlines())
    ]  # fmt: skip
    alpaca = [
        {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
        for r in map(json.loads, (TINY_CORPORA / "alpaca.jsonl").read_text().splitlines())
    ]
    half = len(alpaca) // 2
    return dict(zip(CHAT_REPOS, (cards, alpaca[:half], alpaca[half:]), strict=True))


def build_recipe_mirror(
    root: Path, chat_rows: dict[str, list[dict[str, Any]]] | None = None
) -> Path:
    """A mirror of every hub dataset the paper recipes name (sources and benchmarks).

    The chat-style training repositories hold `CHAT_ROWS` unless `chat_rows` ({repo: rows},
    e.g. `corpus_chat_rows()`) says otherwise; benchmark-derived repositories hold the real
    release rows."""
    medqa = REAL / "medqa" / "data_clean" / "questions" / "US" / "4_options"
    medqa_test = [
        json.loads(line)
        for line in (medqa / "phrases_no_exclude_test.jsonl").read_text().splitlines()
    ]
    for repo in CHAT_REPOS:
        write_repo(root, repo, {"default": {"train": (chat_rows or {}).get(repo, CHAT_ROWS)}})
    write_repo(
        root,
        "GBaker/MedQA-USMLE-4-options",
        {"default": {"train": medqa_test[:20], "test": medqa_test}},
    )
    medmcqa = medmcqa_rows()
    write_repo(
        root,
        "openlifescienceai/medmcqa",
        {"default": {"train": medmcqa[:20], "validation": medmcqa}},
    )
    labeled = pubmedqa_rows()
    write_repo(
        root,
        "qiaojin/PubMedQA",
        {"pqa_labeled": {"train": labeled}, "pqa_artificial": {"train": labeled[:20]}},
    )
    write_repo(
        root,
        "cais/mmlu",
        {s: {"test": mmlu_rows(s), "dev": mmlu_rows(s)[:5]} for s in MMLU_SUBJECTS},
    )
    write_repo(root, "EleutherAI/headqa", {"en": {"test": headqa_rows()}})
    return root
