"""Real-data input problems: empty sources, lost files, fail-fast input checks, MedMCQA's base."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from med42ray.config import parse_config
from med42ray.data import DataError, check_inputs, inputs, prepare_data, sources

FIX = Path(__file__).parent / "fixtures"
SRC = FIX / "sources"
D = FIX / "decontam"
CORRUPT_PARQUET = b"PAR1 not parquet"
NOT_JSON_LINES = b"\x1f\x8b\x08\x00gzip?\n\x00\x01\x02\n\xff\xfe\n"  # 3 "lines", none JSON


WORDS = (
    "aspirin heparin warfarin insulin metformin sepsis anemia asthma stroke angina murmur edema "
    "fever rash cough dyspnea syncope ischemia renal hepatic cardiac pulmonary gastric neural"
)
VOCAB = WORDS.split()


def _cards(path: Path, n: int, tag: str) -> Path:
    """`n` question/answer cards, each of its own words (no two are near duplicates)."""
    rng = random.Random(tag)
    with path.open("w") as fh:
        for i in range(n):
            w = [rng.choice(VOCAB) for _ in range(8)]
            q = f"Card {tag}{i}: how are {w[0]} {w[1]} and {w[2]} {w[3]} linked?"
            a = f"The {w[4]} of the {w[5]} is linked to {w[6]} in {w[7]}."
            fh.write(json.dumps({"question": q, "answer": a}) + "\n")
    return path


def _config(sources_: list[dict], top: dict | None = None, **data):
    """A config of `sources_` and `data` settings (and top-level sections `top`)."""
    data = {"sources": sources_, **data}
    return parse_config({"model": {"name_or_path": "tiny"}, "data": data, **(top or {})})


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the stage starts Ray or reads a corpus."""
    import med42ray.cluster
    import med42ray.data.pipeline

    def boom(*_a, **_k):
        raise AssertionError("Ray started or a corpus read before the inputs were checked")

    monkeypatch.setattr(med42ray.cluster, "init_ray", boom)
    monkeypatch.setattr(med42ray.data.pipeline, "read_sources", boom)


def _unopenable(path: Path):
    """An `open` for `inputs` that refuses `path`, as for a file without read permission."""

    def fake_open(name, *args, **kwargs):
        if str(name) == str(path):
            raise PermissionError(13, "Permission denied", str(name))
        return open(name, *args, **kwargs)

    return fake_open


# --------------------------------------------------------------------------- empty sources
def test_source_whose_only_file_is_empty_fails_in_one_line(tmp_path, no_ray):
    empty = tmp_path / "x.jsonl"
    empty.write_bytes(b"")
    cfg = _config([{"name": "x", "path": str(empty), "format": "qa"}])
    with pytest.raises(DataError) as err:
        prepare_data(cfg, tmp_path / "out", verbose=False)
    assert _one_line(err) == f"source 'x': no records in {empty} (0 bytes)"


def test_source_of_blank_lines_fails_in_one_line(ray_session, tmp_path):
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n \n\n")
    cfg = _config([{"name": "blank", "path": str(blank), "format": "qa"}])
    with pytest.raises(DataError) as err:
        prepare_data(cfg, tmp_path / "out", verbose=False)
    assert _one_line(err) == f"source 'blank': no records in {blank} (4 bytes)"


# ----------------------------------------------------------------------------- lost files
@pytest.fixture(scope="module")
def lost_run(ray_session, tmp_path_factory):
    """A run that allows the lost files of `mixed`: one good file, a corrupt Parquet, a file
    that is not JSON lines, one that cannot be opened; and MedMCQA in both bases."""
    tmp = tmp_path_factory.mktemp("lost")
    mixed = tmp / "mixed"
    mixed.mkdir()
    _cards(mixed / "b.jsonl", 4, "b")
    (mixed / "c.parquet").write_bytes(CORRUPT_PARQUET)
    (mixed / "d.jsonl").write_bytes(NOT_JSON_LINES)
    _cards(mixed / "e.jsonl", 5, "e")
    cfg = _config(
        [
            {"name": "good", "path": str(_cards(tmp / "a.jsonl", 6, "a")), "format": "qa"},
            {"name": "mixed", "path": str(mixed), "format": "qa"},
            {"name": "mcq_original", "path": str(SRC / "medmcqa_original"), "format": "medmcqa"},
            {"name": "mcq_hub", "path": str(SRC / "medmcqa_hub.jsonl"), "format": "medmcqa"},
        ],
        allow_lost_files=["mixed"],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inputs, "open", _unopenable(mixed / "e.jsonl"), raising=False)
        manifest = prepare_data(cfg, tmp / "out", verbose=False)
    return manifest, tmp


def test_allowed_lost_files_are_listed_with_size_records_and_reason(lost_run):
    manifest, tmp = lost_run
    mixed = manifest["sources"]["mixed"]
    assert mixed["files"] == ["b.jsonl", "c.parquet", "d.jsonl", "e.jsonl"]
    lost = {f["file"]: f for f in mixed["lost_files"]}
    assert list(lost) == ["c.parquet", "d.jsonl", "e.jsonl"]  # in file order
    assert mixed["lost_file_count"] == 3 and manifest["totals"]["lost_file_count"] == 3
    c, d, e = lost["c.parquet"], lost["d.jsonl"], lost["e.jsonl"]
    assert (c["bytes"], c["records"]) == (len(CORRUPT_PARQUET), None)
    assert c["reason"].startswith("unreadable: ")
    assert (d["bytes"], d["records"]) == (len(NOT_JSON_LINES), 3)
    assert d["reason"].startswith("unreadable: no line is JSON (line 1: ")
    e_size = (tmp / "mixed" / "e.jsonl").stat().st_size
    assert (e["bytes"], e["records"]) == (e_size, None)
    assert e["reason"] == "cannot open: PermissionError: Permission denied"
    assert manifest["sources"]["good"]["lost_files"] == []


def test_records_of_lost_files_are_not_read_and_counts_reconcile(lost_run):
    manifest, tmp = lost_run
    mixed = manifest["sources"]["mixed"]
    assert mixed["read"] == mixed["kept"] == 4  # b.jsonl only
    assert mixed["quarantined"] == 0
    cats = ("kept", "quarantined", "sampled_out", "filtered", "deduplicated")
    cats += ("near_deduplicated", "decontaminated")
    for name, c in {**manifest["sources"], "TOTAL": manifest["totals"]}.items():
        assert c["read"] == sum(c[k] for k in cats), name
    assert (tmp / "out" / "quarantine.jsonl").read_text() == ""


def test_a_lost_file_fails_the_stage_unless_allowed(ray_session, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _cards(mixed / "b.jsonl", 4, "b")
    (mixed / "c.parquet").write_bytes(CORRUPT_PARQUET)
    (mixed / "d.jsonl").write_bytes(NOT_JSON_LINES)
    cfg = _config([{"name": "mixed", "path": str(mixed), "format": "qa"}])
    with pytest.raises(DataError) as err:
        prepare_data(cfg, tmp_path / "out", verbose=False)
    text = _one_line(err)
    assert text.startswith(
        f"source 'mixed': lost file {mixed / 'c.parquet'} "
        f"({len(CORRUPT_PARQUET)} bytes, records unknown): unreadable: "
    )
    assert "(and 1 more lost files)" in text and "data.allow_lost_files: ['mixed']" in text
    assert not (tmp_path / "out").exists()


def test_a_file_that_cannot_be_opened_fails_before_reading(tmp_path, monkeypatch, no_ray):
    good = _cards(tmp_path / "a.jsonl", 3, "a")
    monkeypatch.setattr(inputs, "open", _unopenable(good), raising=False)
    cfg = _config([{"name": "a", "path": str(good), "format": "qa"}])
    with pytest.raises(DataError) as err:
        prepare_data(cfg, tmp_path / "out", verbose=False)
    size = good.stat().st_size
    assert _one_line(err).startswith(
        f"source 'a': lost file {good} ({size} bytes, records unknown): cannot open: "
        "PermissionError: Permission denied"
    )


def test_allow_lost_files_must_name_sources(tmp_path):
    good = _cards(tmp_path / "a.jsonl", 3, "a")
    cfg = _config([{"name": "a", "path": str(good), "format": "qa"}], allow_lost_files=["b"])
    with pytest.raises(DataError, match=r"data.allow_lost_files: no source named \['b'\]"):
        check_inputs(cfg)


def test_known_records_of_an_unreadable_parquet_come_from_its_footer(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"question": ["q"] * 7}), path)
    assert sources._known_records(path.read_bytes(), str(path)) == 7
    assert sources._known_records(CORRUPT_PARQUET, "c.parquet") is None


# ------------------------------------------------------------------------------ fail fast
def _bench_config(tmp_path: Path, benchmarks: list[dict]):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _cards(corpus / "a.jsonl", 3, "a")
    (corpus / "b.parquet").write_bytes(CORRUPT_PARQUET)  # not read by the check
    return _config(
        [{"name": "cards", "path": str(corpus), "format": "qa"}],
        top={"eval": {"benchmarks": benchmarks}},
    )


def test_check_inputs_summarises_without_reading_a_corpus(tmp_path, no_ray):
    from med42ray.benchmarks import load_benchmark

    medqa, anatomy = D / "medqa_test.jsonl", D / "mmlu_anatomy_test.jsonl"
    cfg = _bench_config(
        tmp_path,
        [
            {"name": "medqa", "path": str(medqa)},
            {"name": "mmlu_anatomy", "path": str(anatomy)},
        ],
    )
    summary = check_inputs(cfg)
    size = (tmp_path / "corpus" / "a.jsonl").stat().st_size + len(CORRUPT_PARQUET)
    assert summary["sources"] == {"cards": {"files": 2, "bytes": size}}
    assert summary["benchmarks"] == {
        name: {"path": str(path), "items": len(load_benchmark(name, path=str(path)))}
        for name, path in (("medqa", medqa), ("mmlu_anatomy", anatomy))
    }


def test_a_bad_benchmark_path_fails_before_any_corpus_is_read(tmp_path, no_ray):
    gone = tmp_path / "nope.jsonl"
    cfg = _bench_config(tmp_path, [{"name": "medqa", "path": str(gone)}])
    with pytest.raises(DataError) as err:
        prepare_data(cfg, tmp_path / "out", verbose=False)
    text = _one_line(err)
    assert text.startswith("decontamination benchmark 'medqa': ") and str(gone) in text


def test_a_malformed_benchmark_fails_in_one_line_naming_the_record(tmp_path, no_ray):
    bad = tmp_path / "medqa.jsonl"
    bad.write_text(json.dumps({"question": "q", "options": {"A": "a"}}) + "\n")
    cfg = _bench_config(tmp_path, [{"name": "medqa", "path": str(bad)}])
    with pytest.raises(DataError) as err:
        check_inputs(cfg)
    text = _one_line(err)
    assert text.startswith("decontamination benchmark 'medqa': ") and str(bad) in text


# ------------------------------------------------------------------------------- MedMCQA
def _parse(path: Path, fmt: str) -> list[dict]:
    src = sources.resolve_source(0, "s", str(path), fmt)
    return pa.concat_tables(sources.parse_file(path.read_bytes(), src, 0, None)).to_pylist()


def test_medmcqa_original_1_based_and_hub_0_based_files_give_the_same_chats():
    original = _parse(SRC / "medmcqa_original" / "train.json", "medmcqa")
    hub = _parse(SRC / "medmcqa_hub.jsonl", "medmcqa")
    assert [r["drop"] for r in original] == [""] * 4
    assert [r["messages"] for r in original] == [r["messages"] for r in hub]
    wrist_drop = original[0]["messages"][-1]["content"]  # cop 4 in the original: D
    assert wrist_drop.startswith("D. Radial nerve")


def test_medmcqa_both_bases_end_to_end(lost_run):
    manifest, _ = lost_run
    orig, hub = manifest["sources"]["mcq_original"], manifest["sources"]["mcq_hub"]
    assert orig["read"] == orig["kept"] == 4 and orig["quarantined"] == 0
    assert hub["read"] == hub["deduplicated"] == 4  # the very same chats as the original's


def test_medmcqa_undecidable_file_is_lost():
    rows = _parse(SRC / "medmcqa_undecidable.jsonl", "medmcqa")
    assert [(r["drop"], r["reason"]) for r in rows] == [("lost", "unreadable_file")]
    detail = json.loads(rows[0]["detail"])
    assert detail["records"] == 2 and "cannot tell whether cop is 0- or 1-based" in detail["why"]


def test_medmcqa_parquet_with_only_1_to_3_is_the_hubs_0_based_export():
    rows = _parse(FIX / "corpora" / "medmcqa_train.parquet", "medmcqa")
    assert [r["drop"] for r in rows] == ["", ""]
    assert rows[0]["messages"][-1]["content"].startswith("B. Ethosuximide")  # cop 1, 0-based


def test_medmcqa_undecidable_file_fails_the_stage_in_one_line(ray_session, tmp_path):
    path = SRC / "medmcqa_undecidable.jsonl"
    cfg = _config([{"name": "mcq", "path": str(path), "format": "medmcqa"}])
    with pytest.raises(DataError) as err:
        prepare_data(cfg, tmp_path / "out", verbose=False)
    text = _one_line(err)
    assert text.startswith(f"source 'mcq': lost file {path} (")
    assert "2 records): medmcqa form undecidable: " in text
    assert "cannot tell whether cop is 0- or 1-based" in text
