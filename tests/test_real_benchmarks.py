"""The real release files (`data/real/`, see its SOURCES.md) load through the public loader with
the published counts, and golds spot-checked by hand against the raw files land on the right
text."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from med42ray.benchmarks import load_benchmark, load_benchmark_with_provenance

from .conftest import REPO
from .test_benchmark_forms import write_mirror_repo

REAL = REPO / "data" / "real"
MEDQA = REAL / "medqa/data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl"
MEDMCQA = REAL / "medmcqa/data/dev.json"
PUBMEDQA = REAL / "pubmedqa/data"
HEADQA = REAL / "headqa/data/HEAD_EN/test_HEAD_EN.json"


def raw_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sources_table_matches_the_shipped_files() -> None:
    table = (REAL / "SOURCES.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|", table, flags=re.M)
    shipped = {
        str(p.relative_to(REAL))
        for p in REAL.rglob("*")
        if p.is_file() and p.name != "SOURCES.md" and not p.name.startswith("LICENSE")
    }
    assert {name for name, _ in rows} == shipped
    for name, sha in rows:
        assert hashlib.sha256((REAL / name).read_bytes()).hexdigest() == sha, name
    for folder in ("medqa", "medmcqa", "pubmedqa", "mmlu", "headqa"):
        assert list((REAL / folder).glob("LICENSE*")), folder


def test_medqa_us_4_option_test() -> None:
    for path in (MEDQA, REAL / "medqa"):
        got = load_benchmark_with_provenance("medqa", str(path))
        assert got.provenance.items == 1273 and got.provenance.form == "json_lines"
    items = got.items
    assert items[0].gold_text == "Tell the attending that he cannot fail to disclose this mistake"
    assert (items[0].labels[items[0].gold], items[0].subset) == ("B", "step1")
    assert items[1].gold_text == "Cross-linking of DNA"
    assert [i.gold_text for i in items] == [r["answer"] for r in raw_lines(MEDQA)]


def test_medmcqa_dev_is_one_based() -> None:
    got = load_benchmark_with_provenance("medmcqa", str(REAL / "medmcqa"))
    assert got.provenance.items == 4183 and got.provenance.details["cop_base"] == 1
    items = got.items
    assert items[0].id == "45258d3d-b974-44dd-a161-c3fccbdadd88"
    assert (
        items[0].gold_text
        == "Impulse through myelinated fibers is slower than non-myelinated fibers"
    )
    assert (items[-1].gold_text, items[-1].subset) == ("B-cell", "Pathology")
    raw = raw_lines(MEDMCQA)
    assert [i.gold for i in items] == [r["cop"] - 1 for r in raw]
    assert Counter(i.gold for i in items) == {0: 1348, 1: 1085, 2: 925, 3: 825}
    assert len({i.id for i in items}) == 4183


def test_pubmedqa_test_fold_from_test_set_and_from_ori_pqal() -> None:
    from_test_set = load_benchmark_with_provenance("pubmedqa", str(PUBMEDQA / "test_set.json"))
    from_ori = load_benchmark_with_provenance("pubmedqa", str(PUBMEDQA / "ori_pqal.json"))
    assert from_test_set.provenance.items == from_ori.provenance.items == 500
    assert from_test_set.items == from_ori.items
    assert from_test_set.provenance.sha256 == from_ori.provenance.sha256
    assert from_ori.provenance.dropped == {"outside_test_fold": 500}
    folder = load_benchmark("pubmedqa", str(REAL / "pubmedqa"))
    assert folder == from_ori.items
    first = from_ori.items[0]
    assert (first.id, first.gold_text) == ("12377809", "yes")
    assert first.question == "Is anorectal endosonography valuable in dyschesia?"
    assert Counter(i.gold_text for i in from_ori.items) == {"yes": 276, "no": 169, "maybe": 55}
    rest = load_benchmark("pubmedqa", str(PUBMEDQA / "ori_pqal.json"), split="train")
    assert len(rest) == 500 and not {i.id for i in rest} & {i.id for i in from_ori.items}


def test_pubmedqa_hub_rows_are_cut_to_the_same_test_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qiaojin/PubMedQA `pqa_labeled` (one `train` split of 1,000) through a mirror, its rows
    built from ori_pqal.json: `test` is the 500 of the shipped test_ground_truth.json."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    ori = json.loads((PUBMEDQA / "ori_pqal.json").read_text(encoding="utf-8"))
    rows = [
        {
            "pubid": int(pmid),
            "question": item["QUESTION"],
            "context": {
                "contexts": item["CONTEXTS"],
                "labels": item["LABELS"],
                "meshes": item["MESHES"],
            },
            "long_answer": item["LONG_ANSWER"],
            "final_decision": item["final_decision"],
        }
        for pmid, item in ori.items()
    ]
    write_mirror_repo(tmp_path / "mirror", "qiaojin/PubMedQA", {"pqa_labeled": {"train": rows}})
    hub = load_benchmark_with_provenance("pubmedqa", mirror=str(tmp_path / "mirror"))
    local = load_benchmark_with_provenance("pubmedqa", str(PUBMEDQA / "test_set.json"))
    assert hub.provenance.items == 500 and hub.provenance.form == "hub"
    assert hub.provenance.details["test_fold"] == "pubmedqa_test_ground_truth.json"
    assert hub.provenance.sha256 == local.provenance.sha256
    pool = load_benchmark("pubmedqa", split="train", mirror=str(tmp_path / "mirror"))
    assert len(pool) == 500


def test_headqa_english_test() -> None:
    got = load_benchmark_with_provenance("headqa", str(HEADQA))
    assert got.provenance.items == 2742 and got.provenance.form == "headqa_nested"
    items = got.items
    assert len({i.id for i in items}) == 2742
    assert sum(i.id.endswith(":1") for i in items) == 12  # qid 1 in each of the 12 exams
    assert (items[0].id, items[0].gold_text) == ("Cuaderno_2016_1_B:1", "Collagen")
    assert (items[-1].id, items[-1].gold_text) == ("Cuaderno_2017_1_Q:235", "Two.")
    dev = load_benchmark("headqa", str(REAL / "headqa"), split="validation")
    assert len(dev) == 1366


@pytest.mark.parametrize(
    ("subject", "count", "first", "last"),
    [
        ("anatomy", 135, "paralysis of the facial muscles.", None),
        (
            "clinical_knowledge",
            265,
            None,
            "do not possess an objective way of assessing pain.",
        ),
        ("college_biology", 144, None, None),
        ("college_medicine", 173, None, None),
        ("medical_genetics", 100, None, None),
        ("professional_medicine", 272, None, "Increases nitric oxide concentration"),
    ],
)
def test_mmlu_clinical_test_sets(subject: str, count: int, first, last) -> None:
    got = load_benchmark_with_provenance(f"mmlu_{subject}", str(REAL / "mmlu"))
    assert got.provenance.items == count and got.provenance.form == "mmlu_csv"
    assert got.provenance.details["file"] == f"data/test/{subject}_test.csv"
    assert all(i.subset == subject and len(i.choices) == 4 for i in got.items)
    if first:
        assert got.items[0].gold_text == first
    if last:
        assert got.items[-1].gold_text == last


def test_mmlu_quoted_fields_are_read_whole() -> None:
    items = load_benchmark("mmlu_anatomy", str(REAL / "mmlu/data/test/anatomy_test.csv"))
    assert items[1].question == 'A "dished face" profile is often associated with'
    assert (
        items[1].gold_text
        == "a recessive maxilla due to failure of elongation of the cranial base."
    )
    assert items[0].choices[2] == "paralysis of the facial muscles, loss of taste and lacrimation."
