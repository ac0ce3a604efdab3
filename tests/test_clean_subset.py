"""Clean-subset scores (GPT-3's contamination analysis): the data stage's `overlap.json`, the
evaluation's `clean` column and summary columns, the report's table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from med42ray.config import DecontamConfig, parse_config

STEMS = [
    "A 31-year-old carpenter reports a painless swelling on the dorsum of his left wrist that "
    "grows when he works and shrinks after a weekend of rest at home with his family.",
    "A 64-year-old retired pilot describes crushing chest pressure radiating to the jaw while "
    "shovelling snow outside his cabin, relieved after ten minutes of sitting quietly indoors.",
    "A 9-year-old girl has a honey-coloured crusted rash around her nostrils that spread to her "
    "chin within three days after her younger brother returned from a summer camp by the lake.",
]
TAIL = " Which of the following is the most likely diagnosis?"
OPTIONS = [
    ["Ganglion cyst", "Lipoma", "Gout", "Osteosarcoma"],
    ["Stable angina", "Pericarditis", "Costochondritis", "Aortic dissection"],
    ["Impetigo", "Eczema", "Scabies", "Tinea"],
]


def _benchmark(path: Path) -> Path:
    with path.open("w") as fh:
        for stem, opts in zip(STEMS, OPTIONS, strict=True):
            options = dict(zip("ABCD", opts, strict=True))
            row = {"question": stem + TAIL, "answer": opts[0], "options": options}
            fh.write(json.dumps({**row, "answer_idx": "A", "meta_info": "step1"}) + "\n")
    return path


def _records() -> list[dict]:
    partial = " ".join(STEMS[1].split()[4:18])  # 14 words: 2 of its 31 13-grams, kept
    return [
        {"question": STEMS[0] + TAIL, "answer": "This is a ganglion cyst of the wrist."},
        {"question": f"Tell me about angina. {partial}.", "answer": "Angina is chest pain."},
        {"question": "How does insulin lower the blood glucose?", "answer": "Via GLUT4 uptake."},
    ]


def _items(bench: Path):
    from med42ray.benchmarks import load_benchmark

    return load_benchmark("medqa", path=str(bench))


def test_touched_items_include_kept_partial_overlaps(tmp_path) -> None:
    from med42ray.data.decontam import build_index_from_items, match_and_touch

    items = _items(_benchmark(tmp_path / "medqa.jsonl"))
    index = build_index_from_items(items, DecontamConfig())
    texts = [r["question"] + "\n" + r["answer"] for r in _records()]
    found, touched = match_and_touch(index, texts)
    assert found[0] is not None and found[0].item_id == str(items[0].id)
    assert found[1] is None and found[2] is None  # below the removal rule
    assert touched.to_pylist() == [[0], [1], []]


@pytest.fixture(scope="module")
def stage(ray_session, tmp_path_factory):
    from med42ray.data import prepare_data

    tmp = tmp_path_factory.mktemp("clean")
    bench = _benchmark(tmp / "medqa_test.jsonl")
    with (tmp / "train.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in _records())
    cfg = parse_config(
        {
            "name": "clean-test",
            "model": {"name_or_path": "tiny"},
            "data": {
                "sources": [{"name": "qa", "path": str(tmp / "train.jsonl"), "format": "qa"}],
                "filters": {"min_tokens": 4, "max_tokens": 1024},
            },
            "eval": {"benchmarks": [{"name": "medqa", "path": str(bench)}]},
        }
    )
    out = tmp / "out"
    manifest = prepare_data(cfg, out, num_blocks=2, concurrency=1, verbose=False)
    return out, manifest, _items(bench)


def test_overlap_file_lists_items_touched_by_kept_records(stage) -> None:
    out, manifest, items = stage
    assert manifest["decontamination"]["removed"] == 1
    assert manifest["totals"]["kept"] == 2
    overlap = json.loads((out / "overlap.json").read_text())
    assert overlap["enabled"] is True
    assert overlap["benchmarks"] == {
        "medqa": {"items": 3, "touched": 1, "touched_ids": [str(items[1].id)]}
    }
    assert manifest["decontamination"]["overlap"] == {"medqa": {"items": 3, "touched": 1}}


def test_read_overlap_and_clean_column(stage) -> None:
    from med42ray.data.overlap import read_overlap
    from med42ray.eval.runner import clean_items

    out, _, items = stage
    touched = read_overlap(out / "overlap.json")
    assert touched == {"medqa": {str(items[1].id)}}
    preds = pd.DataFrame({"benchmark": ["medqa"] * 3, "item_id": [i.id for i in items]})
    assert clean_items(preds, touched).tolist() == [True, False, True]
    assert clean_items(preds, read_overlap(None)).tolist() == [True, True, True]


def _predictions(task: str, correct: list[int], clean: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "benchmark": task,
            "subset": "",
            "prompt_format": "multiple_choice",
            "prompt_version": "1",
            "compute_s": 0.1,
            "parsed": True,
            "correct": [bool(c) for c in correct],
            "correct_norm": [bool(c) for c in correct],
            "clean": [bool(c) for c in clean],
        }
    )


def test_summary_clean_columns() -> None:
    from med42ray.eval.metrics import SUMMARY_COLUMNS, summarise

    preds = pd.concat(
        [
            _predictions(
                "usmle_sample_exam", [True, True, False, False], [True, False, True, True]
            ),
            _predictions("usmle_self_assessment", [1, 0], [0, 0]),
        ],
        ignore_index=True,
    )
    summary = summarise(preds, {"model": "m", "engine": "hf", "scoring": "ll", "wall_s": 1.0})
    assert list(summary.columns) == SUMMARY_COLUMNS
    rows = summary.set_index("benchmark")
    sample = rows.loc["usmle_sample_exam"]
    assert (sample["n"], sample["acc"]) == (4, 0.5)  # all items: unchanged
    assert sample["n_clean"] == 3
    assert sample["acc_clean"] == pytest.approx(1 / 3)
    assert sample["acc_clean_stderr"] == pytest.approx(math.sqrt(1 / 3 * 2 / 3 / 2))
    assessment = rows.loc["usmle_self_assessment"]
    assert assessment["n_clean"] == 0 and math.isnan(assessment["acc_clean"])
    group = rows.loc["usmle"]
    assert group["n_clean"] == 3 and math.isnan(group["acc_clean"])
    no_column = summarise(preds.drop(columns="clean"), {"model": "m"}).set_index("benchmark")
    assert no_column.loc["usmle_sample_exam", "n_clean"] == 4


def test_clean_table_layout() -> None:
    from med42ray.report.tables import clean_table

    scores = pd.DataFrame(
        {
            "model": ["lora", "base", "base"],
            "benchmark": ["medqa", "medqa", "mmlu_anatomy"],
            "acc": [0.5, 0.25, 0.6],
            "n": [4, 4, 10],
            "acc_clean": [2 / 3, 1 / 3, float("nan")],
            "n_clean": [3, 3, 0],
        }
    )
    table = clean_table(scores)
    assert list(table.columns) == ["benchmark", "base", "lora"]
    assert table.to_dict("records") == [
        {"benchmark": "MMLU anatomy", "base": "60.0 (10) / – (0)", "lora": "–"},
        {"benchmark": "MedQA", "base": "25.0 (4) / 33.3 (3)", "lora": "50.0 (4) / 66.7 (3)"},
    ]


def test_report_has_the_clean_subset_section(tmp_path) -> None:
    """The report marks items clean from the run's data stage (`overlap.json`) and the
    evaluations' predictions: new training data changes the clean columns, not the scores."""
    from med42ray.data.manifest import CATEGORIES
    from med42ray.eval.metrics import summarise
    from med42ray.report import build_report

    preds = _predictions("usmle_sample_exam", [1, 1, 0, 0], [1, 1, 1, 1])
    preds["item_id"] = ["q0", "q1", "q2", "q3"]
    stages = {"data": "data-k"}
    (tmp_path / "data-k").mkdir()
    overlap = {"usmle_sample_exam": {"items": 4, "touched": 1, "touched_ids": ["q1"]}}
    counts = dict.fromkeys(["read", "kept", *CATEGORIES], 0)
    manifest = {"sources": {}, "totals": counts, "decontamination": {"per_benchmark": {}}}
    (tmp_path / "data-k" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "data-k" / "overlap.json").write_text(
        json.dumps({"enabled": True, "ngram": 13, "benchmarks": overlap})
    )
    for model in ("base", "lora"):
        folder = tmp_path / f"eval-{model}-k"
        folder.mkdir()
        summarise(preds, {"model": model, "wall_s": 1.0}).to_csv(folder / "summary.csv")
        preds.to_parquet(folder / "predictions.parquet")
        (folder / "eval.json").write_text(json.dumps({"benchmarks": {}}))
        stages[f"eval-{model}"] = folder.name
    (tmp_path / "run.json").write_text(json.dumps({"name": "r", "stages": stages}))
    (tmp_path / "config.yaml").write_text("name: r\n")
    text = (build_report([tmp_path], tmp_path / "report") / "report.md").read_text()
    section = text.split("## Accuracy on the clean subset")[1].split("## ")[0]
    assert "*clean*" in section and "overlap.json" in section
    assert "| USMLE sample exam | 50.0 (4) / 33.3 (3) | 50.0 (4) / 33.3 (3) |" in section
    numbers = pd.read_csv(tmp_path / "report" / "numbers.csv")
    clean = numbers[numbers["section"] == "clean accuracy"]
    assert set(clean["metric"]) == {"acc_clean", "n_clean"} and len(clean) == 4
