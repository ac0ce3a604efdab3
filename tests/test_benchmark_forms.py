"""Every published form of every benchmark, from small fixtures written by us (golds known):
the form is detected from the data, each gold lands on the right text, ambiguity fails loudly,
and every broken file fails in one line naming the file, the record and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from med42ray.benchmarks import (
    BenchmarkError,
    TaskSpec,
    items_sha256,
    load_benchmark,
    load_benchmark_with_provenance,
    load_task,
    medmcqa_cop_base,
)

FORMS = Path(__file__).parent / "fixtures" / "forms"


def loaded(task: str, rel: str, **kw):
    return load_benchmark_with_provenance(task, str(FORMS / rel), **kw)


def one_line_error(task: str, path: Path | str, **kw) -> str:
    with pytest.raises(BenchmarkError) as err:
        load_benchmark(task, str(path), **kw)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{task}: ")
    return message


# ------------------------------------------------------------------------- each form loads
@pytest.mark.parametrize(
    ("task", "rel", "form", "golds"),
    [
        (
            "medmcqa",
            "medmcqa/data/dev.json",
            "json_lines",
            ["Vitamin C", "Ethosuximide", "Axillary nerve", "Appendix", "HbA"],
        ),
        (
            "medmcqa",
            "medmcqa/validation_hub.jsonl",
            "json_lines",
            ["Vitamin C", "Ethosuximide", "Axillary nerve", "Appendix", "HbA"],
        ),
        (
            "headqa",
            "headqa",
            "headqa_nested",
            ["Collagen", "Helicase", "Mitochondrion", "Intramuscular adrenaline", "Lipoma"],
        ),
        (
            "mmlu_anatomy",
            "mmlu",
            "mmlu_csv",
            ["Ulna", "Long thoracic nerve", "Trapezius", "sartorius"],
        ),
        (
            "mmlu_medical_genetics",
            "mmlu/data/test/medical_genetics_test.csv",
            "mmlu_csv",
            ["CFTR", "CAG", "meiotic nondisjunction, maternal"],
        ),
        ("pubmedqa", "pubmedqa", "pubmedqa_dict", ["maybe", "yes"]),
        ("pubmedqa", "pubmedqa/data/ori_pqal.json", "pubmedqa_dict", ["maybe", "yes"]),
        (
            "medqa",
            "medqa",
            "json_lines",
            ["Parainfluenza virus", "Phenylalanine hydroxylase"],
        ),
        (
            "usmle_self_assessment",
            "usmle_medalpaca",
            "medalpaca_usmle",
            ["Treponema pallidum", "Monoclonal protein spike", "Serum TSH", "Aspirin"],
        ),
    ],
)
def test_each_form_loads_with_its_golds(task: str, rel: str, form: str, golds: list[str]) -> None:
    got = loaded(task, rel)
    assert got.provenance.form == form
    assert got.provenance.items == len(got.items) == len(golds)
    assert [item.gold_text for item in got.items] == golds
    assert len({item.id for item in got.items}) == len(golds)
    assert got.provenance.sha256 == items_sha256(got.items)


# ------------------------------------------------------------------------- MedMCQA's cop base
def test_medmcqa_cop_base_is_read_from_the_file() -> None:
    one = loaded("medmcqa", "medmcqa/data/dev.json")
    zero = loaded("medmcqa", "medmcqa/validation_hub.jsonl")
    assert (one.provenance.details["cop_base"], zero.provenance.details["cop_base"]) == (1, 0)
    assert [i.gold for i in one.items] == [i.gold for i in zero.items] == [2, 3, 0, 1, 0]
    assert one.items[0].id == "mm-0000" and one.items[0].subset == "Dental"
    assert loaded("medmcqa", "medmcqa").provenance.details["file"] == "data/dev.json"


def test_medmcqa_cop_base_rules() -> None:
    assert medmcqa_cop_base([0, 1, 2, 3], "f") == 0
    assert medmcqa_cop_base([1, 2, 4], "f") == 1
    assert medmcqa_cop_base([-1, -1], "f") == 0  # the hub's unlabelled test split
    with pytest.raises(BenchmarkError, match="f: cop takes both 0 and 4"):
        medmcqa_cop_base([0, 4], "f")
    with pytest.raises(BenchmarkError, match="f: cannot tell whether cop is 0- or 1-based"):
        medmcqa_cop_base([1, 2, 3], "f")


def test_undecidable_medmcqa_file_fails_naming_it() -> None:
    message = one_line_error("medmcqa", FORMS / "medmcqa/undecidable.json")
    assert "undecidable.json: cannot tell whether cop is 0- or 1-based" in message


def test_unlabelled_medmcqa_rows_cannot_be_scored(tmp_path: Path) -> None:
    rows = (FORMS / "medmcqa/validation_hub.jsonl").read_text().splitlines()
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({**json.loads(r), "cop": -1}) + "\n" for r in rows))
    message = one_line_error("medmcqa", test)
    assert "test.jsonl: record 0 (line 1)" in message and "unlabelled:cop" in message


def test_out_of_range_cop_names_file_line_and_field(tmp_path: Path) -> None:
    rows = [json.loads(r) for r in (FORMS / "medmcqa/data/dev.json").read_text().splitlines()]
    rows[2]["cop"] = 5
    bad = tmp_path / "dev.json"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    message = one_line_error("medmcqa", bad)
    assert f"{bad}: record 2 (line 3): not a medmcqa record (wrong_type:cop: 5 is not in 1..4)" in (
        message
    )


# ------------------------------------------------------------------------- HEAD-QA
def test_headqa_ids_are_exam_and_qid() -> None:
    items = loaded("headqa", "headqa").items
    assert [i.id for i in items] == [
        "Cuaderno_2016_1_B:1",
        "Cuaderno_2016_1_B:2",
        "Cuaderno_2016_1_B:4",
        "Cuaderno_2016_1_M:1",
        "Cuaderno_2016_1_M:2",
    ]
    assert items[3].subset == "medicine"
    assert items[4].choices[items[4].gold] == "Lipoma"  # answers listed out of aid order


def test_headqa_repeated_qid_within_an_exam_fails_naming_it(tmp_path: Path) -> None:
    doc = json.loads((FORMS / "headqa/data/HEAD_EN/test_HEAD_EN.json").read_text())
    exam = doc["exams"]["Cuaderno_2016_1_B"]["data"]
    exam[1]["qid"] = "1"
    (tmp_path / "test_HEAD_EN.json").write_text(json.dumps(doc))
    message = one_line_error("headqa", tmp_path / "test_HEAD_EN.json")
    assert "duplicate item ids ['Cuaderno_2016_1_B:1']" in message


# ------------------------------------------------------------------------- MMLU
def test_mmlu_csv_keeps_commas_quotes_and_newlines() -> None:
    items = loaded("mmlu_anatomy", "mmlu/data/test/anatomy_test.csv").items
    assert items[1].question == (
        'A "winged" scapula follows injury to which nerve, usually after surgery?'
    )
    assert items[1].choices[1] == "Suprascapular nerve, upper trunk"
    assert (
        items[2].question
        == 'Which muscle is tested by asking the patient to:\n"shrug the shoulders"?'
    )
    assert items[0].subset == "anatomy" and items[0].labels == ("A", "B", "C", "D")


def test_mmlu_folder_picks_the_subject_and_split() -> None:
    dev = loaded("mmlu_anatomy", "mmlu", split="dev")
    assert dev.provenance.details["file"] == "data/dev/anatomy_dev.csv"
    assert [i.gold_text for i in dev.items] == ["Abducens"]
    genetics = loaded("mmlu_medical_genetics", "mmlu")
    assert genetics.provenance.details["file"] == "data/test/medical_genetics_test.csv"
    message = one_line_error("mmlu_anatomy", FORMS / "mmlu/data/test/medical_genetics_test.csv")
    assert "holds MMLU subject medical_genetics, not anatomy" in message


# ------------------------------------------------------------------------- PubMedQA
def test_pubmedqa_test_fold_is_the_same_from_test_set_and_ori_pqal() -> None:
    from_test_set = loaded("pubmedqa", "pubmedqa/data/test_set.json")
    from_ori = loaded("pubmedqa", "pubmedqa/data/ori_pqal.json")
    assert from_test_set.items == from_ori.items
    assert from_test_set.provenance.sha256 == from_ori.provenance.sha256
    assert [i.id for i in from_ori.items] == ["90000003", "90000001"]  # the ground truth's order
    assert from_ori.provenance.dropped == {"outside_test_fold": 2}
    assert from_ori.items[1].context == (
        "We followed 120 adults for a year.",
        "Systolic pressure fell by 5 mmHg.",
    )
    rest = loaded("pubmedqa", "pubmedqa/data/ori_pqal.json", split="train")
    assert [i.id for i in rest.items] == ["90000002", "90000004"]


def test_pubmedqa_task_names_its_test_fold() -> None:
    spec = load_task("pubmedqa")
    assert (spec.dataset_path, spec.dataset_name) == ("qiaojin/PubMedQA", "pqa_labeled")
    assert (spec.test_split, spec.fewshot_split) == ("test", "train")
    assert spec.test_ids == "pubmedqa_test_ground_truth.json"
    raw = {**spec.model_dump(), "fewshot_split": None}
    with pytest.raises(ValueError, match="test_ids carves the test fold out of fewshot_split"):
        TaskSpec.model_validate(raw)


def test_pubmedqa_ground_truth_lacking_a_pmid_fails_naming_it() -> None:
    message = one_line_error("pubmedqa", FORMS / "pubmedqa_truth_lacks_one")
    assert "test_set.json: PMID 90000002: not in test_ground_truth.json" in message


def test_pubmedqa_ground_truth_pmid_missing_from_the_items_fails(tmp_path: Path) -> None:
    shutil.copy(FORMS / "pubmedqa/data/test_ground_truth.json", tmp_path)
    ori = json.loads((FORMS / "pubmedqa/data/ori_pqal.json").read_text())
    del ori["90000003"]
    (tmp_path / "ori_pqal.json").write_text(json.dumps(ori))
    message = one_line_error("pubmedqa", tmp_path / "ori_pqal.json")
    assert "PMID 90000003 of test_ground_truth.json is missing" in message


def test_pubmedqa_gold_disagreeing_with_the_ground_truth_fails(tmp_path: Path) -> None:
    (tmp_path / "test_ground_truth.json").write_text('{"90000003": "no", "90000001": "yes"}')
    shutil.copy(FORMS / "pubmedqa/data/ori_pqal.json", tmp_path)
    message = one_line_error("pubmedqa", tmp_path / "ori_pqal.json")
    assert "ori_pqal.json: PMID 90000003: not a pubmedqa record (wrong_type:final_decision" in (
        message
    )


# ------------------------------------------------------------------------- medAlpaca USMLE
def test_medalpaca_folder_drops_image_questions_with_a_count() -> None:
    got = loaded("usmle_self_assessment", "usmle_medalpaca")
    assert got.provenance.dropped == {"image_question": 1, "no_options": 1}
    assert [i.id for i in got.items] == ["step1:1", "step1:2", "step2:1", "step2:2"]
    assert [i.subset for i in got.items] == ["1", "1", "2", "2"]
    assert got.items[1].labels == ("A", "B", "C", "D", "E", "F")
    assert got.provenance.details["files"] == ["step1.json", "step2.json"]


def test_medalpaca_answer_inside_the_step_file_is_read(tmp_path: Path) -> None:
    steps = json.loads((FORMS / "usmle_medalpaca/step2.json").read_text())
    (tmp_path / "step2.json").write_text(json.dumps([{**q, "answer": "A"} for q in steps]))
    items = load_benchmark("usmle_self_assessment", str(tmp_path))
    assert [i.gold_text for i in items] == ["Serum TSH", "Aspirin"]


@pytest.mark.parametrize(
    ("solutions", "expected"),
    [
        ({"1": "A"}, "step2.json: no 2: not a usmle record (missing_field:answer: no entry in "),
        ({"1": "A", "2": "G"}, "step2.json: no 2: not a usmle record (wrong_type:answer: 'G' of"),
    ],
)
def test_medalpaca_bad_solutions_fail_naming_the_question(
    tmp_path: Path, solutions: dict, expected: str
) -> None:
    shutil.copy(FORMS / "usmle_medalpaca/step2.json", tmp_path)
    (tmp_path / "step2_solutions.json").write_text(json.dumps(solutions))
    assert expected in one_line_error("usmle_self_assessment", tmp_path)


# ------------------------------------------------------------------------- broken files
def _edit(rel: str, old: str, new: str):
    def write(tmp: Path) -> Path:
        source = FORMS / rel
        target = tmp / source.name
        text = source.read_bytes().decode("utf-8")
        assert old in text, old
        target.write_bytes(text.replace(old, new, 1).encode("utf-8"))
        return target

    return write


def _bad_bytes(rel: str, line: int):
    def write(tmp: Path) -> Path:
        source = FORMS / rel
        lines = source.read_bytes().split(b"\n")
        lines[line - 1] = lines[line - 1][:20] + b"\xff\xfe" + lines[line - 1][20:]
        target = tmp / source.name
        target.write_bytes(b"\n".join(lines))
        return target

    return write


@pytest.mark.parametrize(
    ("task", "make", "expected"),
    [
        (
            "medmcqa",
            _edit("medmcqa/data/dev.json", '"opb":"Vitamin B1",', ""),
            "dev.json: record 0 (line 1): not a medmcqa record (missing_field:opb)",
        ),
        (
            "medmcqa",
            _edit("medmcqa/data/dev.json", '"cop":4', '"cop":"4"'),
            "dev.json: record 1 (line 2): not a medmcqa record (wrong_type:cop: got '4')",
        ),
        (
            "medmcqa",
            _edit("medmcqa/data/dev.json", '"cop":2,', '"cop":2'),
            "dev.json: line 4: malformed JSON (Expecting ',' delimiter",
        ),
        ("medmcqa", _bad_bytes("medmcqa/data/dev.json", 3), "dev.json: line 3: not UTF-8 text"),
        (
            "headqa",
            _edit("headqa/data/HEAD_EN/test_HEAD_EN.json", '"ra": "3"', '"ra": "7"'),
            "test_HEAD_EN.json: exam Cuaderno_2016_1_B qid 2: not a headqa record "
            "(wrong_type:ra: '7' is not an answer id)",
        ),
        (
            "headqa",
            _edit("headqa/data/HEAD_EN/test_HEAD_EN.json", '"qtext": "First-line', '"q": "x'),
            "test_HEAD_EN.json: exam Cuaderno_2016_1_M qid 1: not a headqa record "
            "(missing_field:qtext)",
        ),
        (
            "headqa",
            _edit("headqa/data/HEAD_EN/test_HEAD_EN.json", '"qid": "4", ', ""),
            "test_HEAD_EN.json: exam Cuaderno_2016_1_B question 2: not a headqa record "
            "(missing_field:qid)",
        ),
        (
            "headqa",
            _edit("headqa/data/HEAD_EN/test_HEAD_EN.json", '"year": "2016"}', '"year": "2016"'),
            "test_HEAD_EN.json: line 1: malformed JSON",
        ),
        (
            "mmlu_anatomy",
            _edit("mmlu/data/test/anatomy_test.csv", "pectineus,B", "pectineus,E"),
            "anatomy_test.csv: record 3 (line 5): not a mmlu record "
            "(wrong_type:answer: 'E' is not a letter A-D)",
        ),
        (
            "mmlu_anatomy",
            _edit("mmlu/data/test/anatomy_test.csv", "Humerus,Scapula,B", "Humerus,B"),
            "anatomy_test.csv: record 0 (line 1): not an mmlu record "
            "(expected 6 fields question,A,B,C,D,answer; got 5)",
        ),
        (
            "mmlu_anatomy",
            _bad_bytes("mmlu/data/test/anatomy_test.csv", 5),
            "anatomy_test.csv: line 5: not UTF-8 text",
        ),
        (
            "pubmedqa",
            _edit("pubmedqa/data/test_set.json", '"QUESTION": "Does coffee', '"Q": "Does coffee'),
            "test_set.json: PMID 90000003: not a pubmedqa record (missing_field:QUESTION)",
        ),
        (
            "pubmedqa",
            _edit("pubmedqa/data/test_set.json", '"final_decision": "yes"', '"final_decision": 1'),
            "test_set.json: PMID 90000001: not a pubmedqa record (wrong_type:final_decision",
        ),
        (
            "medqa",
            _edit(
                "medqa/questions/US/4_options/phrases_no_exclude_test.jsonl",
                '"answer_idx":"C"',
                '"answer_idx":"F"',
            ),
            "phrases_no_exclude_test.jsonl: record 1 (line 2): not a medqa record "
            "(wrong_type:answer_idx: 'F' is not an option)",
        ),
        (
            "usmle_self_assessment",
            _edit("usmle_medalpaca/step2.json", '"question": "A 45', '"q": "A 45'),
            "step2.json: no 2: not a usmle record (missing_field:question)",
        ),
        (
            "usmle_self_assessment",
            _edit("usmle_medalpaca/step2.json", "}]", "}"),
            "step2.json: line 1: malformed JSON",
        ),
    ],
)
def test_broken_files_fail_in_one_line_naming_file_record_and_field(
    tmp_path: Path, task: str, make, expected: str
) -> None:
    path = make(tmp_path)
    target = tmp_path if task == "usmle_self_assessment" else path
    if task == "pubmedqa":
        shutil.copy(FORMS / "pubmedqa/data/test_ground_truth.json", tmp_path)
    if task == "usmle_self_assessment":
        shutil.copy(FORMS / "usmle_medalpaca/step2_solutions.json", tmp_path)
    message = one_line_error(task, target)
    assert str(tmp_path) in message and expected in message, message


def test_a_release_form_given_to_the_wrong_task_fails() -> None:
    message = one_line_error("medqa", FORMS / "headqa/data/HEAD_EN/test_HEAD_EN.json")
    assert "a HEAD-QA exam file, but medqa reads medqa records" in message
    message = one_line_error("medqa", FORMS / "mmlu/data/test/anatomy_test.csv")
    assert "an MMLU question,A,B,C,D,answer CSV, but medqa reads medqa records" in message


def test_a_folder_with_no_telling_file_fails(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.jsonl").write_text("{}\n")
    message = one_line_error("medqa", tmp_path)
    assert "cannot tell which file holds medqa's test split" in message


# ------------------------------------------------------------------------- provenance
def test_provenance_hash_is_stable() -> None:
    got = loaded("headqa", "headqa")
    again = loaded("headqa", "headqa/data/HEAD_EN/test_HEAD_EN.json")
    assert got.provenance.sha256 == again.provenance.sha256
    assert got.provenance.sha256 == (
        "8a76fb3cf79180742399e749e8b0b8bd62cca2443f6dacc250bba46eba242158"
    )
    assert got.provenance.to_dict()["task"] == "headqa"
    limited = loaded("headqa", "headqa", limit=2)
    assert limited.provenance.items == 2 and limited.provenance.details["limit"] == 2


# ------------------------------------------------------------------------- hub mirror
def write_mirror_repo(mirror: Path, repo_id: str, configs: dict[str, dict[str, list[dict]]]):
    """`<mirror>/datasets/<repo_id>` as the hub lays a repository out: parquet files, and a
    README.md dataset card whose `configs:` section maps configs and splits to them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = mirror / "datasets" / repo_id
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        (folder / config).mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            pq.write_table(
                pa.Table.from_pylist(rows), folder / config / f"{split}-00000-of-00001.parquet"
            )
            card += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    card += ["---", f"# {repo_id}, mirrored for the tests", ""]
    (folder / "README.md").write_text("\n".join(card))
    return folder


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "mirror"
    medmcqa = [
        json.loads(r) for r in (FORMS / "medmcqa/validation_hub.jsonl").read_text().splitlines()
    ]
    write_mirror_repo(root, "openlifescienceai/medmcqa", {"default": {"validation": medmcqa}})
    anatomy = [
        {"question": "Which bone forms the point of the elbow?", "subject": "anatomy",
         "choices": ["Radius", "Ulna", "Humerus", "Scapula"], "answer": 1},
        {"question": "The femoral triangle is bounded laterally by the", "subject": "anatomy",
         "choices": ["adductor longus", "sartorius", "inguinal ligament", "pectineus"],
         "answer": 1},
    ]  # fmt: skip
    write_mirror_repo(root, "cais/mmlu", {"anatomy": {"test": anatomy, "dev": anatomy[:1]}})
    return root


def test_hub_tasks_load_through_a_mirror(mirror: Path) -> None:
    medmcqa = load_benchmark_with_provenance("medmcqa", mirror=str(mirror))
    assert medmcqa.provenance.form == "hub"
    assert medmcqa.provenance.source == f"{mirror}/datasets/openlifescienceai/medmcqa::validation"
    assert medmcqa.provenance.details == {"mirror": str(mirror)}
    local = loaded("medmcqa", "medmcqa/data/dev.json")
    assert medmcqa.items == local.items and medmcqa.provenance.sha256 == local.provenance.sha256
    anatomy = load_benchmark("mmlu_anatomy", mirror=str(mirror))
    assert [i.gold_text for i in anatomy] == ["Ulna", "sartorius"]
    assert [
        i.gold_text for i in load_benchmark("mmlu_anatomy", split="dev", mirror=str(mirror))
    ] == ["Ulna"]


def test_a_broken_mirror_fails_in_one_line(mirror: Path) -> None:
    for parquet in (mirror / "datasets/cais/mmlu/anatomy").glob("test-*.parquet"):
        parquet.unlink()
    with pytest.raises(BenchmarkError) as err:
        load_benchmark("mmlu_anatomy", mirror=str(mirror))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        f"mmlu_anatomy: cannot load {mirror}/datasets/cais/mmlu (config anatomy"
    )
    with pytest.raises(BenchmarkError) as err:
        load_benchmark("headqa", mirror=str(mirror))  # not mirrored
    assert "\n" not in str(err.value) and f"{mirror}/datasets/EleutherAI/headqa" in str(err.value)
