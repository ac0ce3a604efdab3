"""The data stage end to end on one local Ray: accounting, dedup, decontamination, determinism."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from med42ray.config import parse_config

FIX = Path(__file__).parent / "fixtures"
C = FIX / "corpora"
D = FIX / "decontam"
VOCAB = (
    "aspirin heparin warfarin insulin metformin sepsis anemia asthma stroke angina murmur "
    "edema fever rash cough dyspnea syncope ischemia renal hepatic cardiac pulmonary gastric "
    "neural lymph biopsy culture dose infusion plasma serum titre lesion nodule embolus"
)
VOCAB = VOCAB.split()


def _synthetic(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            w = [rng.choice(VOCAB) for _ in range(8)]
            q = f"Card {seed}-{i}: what is the link between {w[0]} {w[1]} and {w[2]} {w[3]}?"
            a = f"The {w[4]} of the {w[5]} is linked to {w[6]} in {w[7]}."
            fh.write(json.dumps({"question": q, "answer": a}) + "\n")


def data_config(tmp: Path, **data_overrides) -> dict:
    _synthetic(tmp / "mix_weight.jsonl", 200, 1)
    _synthetic(tmp / "mix_cap.jsonl", 60, 2)
    sources = [
        {"name": "alpaca", "path": str(C / "alpaca.jsonl"), "format": "alpaca", "epochs": 2},
        {"name": "sharegpt", "path": str(C / "sharegpt.json"), "format": "sharegpt"},
        {"name": "messages", "path": str(C / "messages.jsonl"), "format": "messages"},
        {"name": "medqa", "path": str(C / "medqa_train.jsonl"), "format": "medqa"},
        {"name": "medmcqa", "path": str(C / "medmcqa_train.parquet"), "format": "medmcqa"},
        {"name": "pubmedqa", "path": str(C / "pubmedqa_train.jsonl"), "format": "pubmedqa"},
        {"name": "flashcards", "path": str(C / "flashcards.jsonl"), "format": "qa"},
        {"name": "filters", "path": str(C / "filters.jsonl"), "format": "messages"},
        {"name": "dups", "path": str(C / "dups.jsonl"), "format": "qa"},
        {"name": "bad", "path": str(C / "bad.jsonl"), "format": "qa"},
        {"name": "contaminated", "path": str(D / "contaminated.jsonl"), "format": "alpaca"},
        {"name": "hard_negatives", "path": str(D / "hard_negatives.jsonl"), "format": "alpaca"},
        {
            "name": "mix_weight",
            "path": str(tmp / "mix_weight.jsonl"),
            "format": "qa",
            "weight": 0.5,
        },
        {
            "name": "mix_cap",
            "path": str(tmp / "mix_*.jsonl").replace("mix_*", "mix_cap"),
            "format": "qa",
            "max_records": 10,
        },
    ]
    data = {
        "sources": sources,
        "filters": {"min_tokens": 8, "max_tokens": 1024, "languages": ["en"]},
        "max_quarantine_rate": 0.9,
        "rows_per_shard": 40,
        "eval_fraction": 0.1,
        **data_overrides,
    }
    return {
        "name": "data-test",
        "seed": 3,
        "model": {"name_or_path": "tiny"},
        "data": data,
        "eval": {
            "benchmarks": [
                {"name": "medqa", "path": str(D / "medqa_test.jsonl")},
                {"name": "mmlu_anatomy", "path": str(D / "mmlu_anatomy_test.jsonl")},
                {"name": "pubmedqa", "path": str(D / "pubmedqa_test.jsonl")},
                {"name": "usmle_sample_exam", "path": str(D / "usmle_sample.jsonl")},
            ]
        },
    }


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    from med42ray.data import prepare_data

    tmp = tmp_path_factory.mktemp("data")
    cfg = parse_config(data_config(tmp))
    out = tmp / "out"
    manifest = prepare_data(cfg, out, num_blocks=4, concurrency=2, verbose=False)
    return cfg, out, manifest, tmp


def _rows(out: Path, split: str = "train") -> list[dict]:
    rows = []
    for path in sorted((out / split).glob("part-*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def _all_rows(out: Path) -> list[dict]:
    return _rows(out, "train") + (_rows(out, "eval") if (out / "eval").exists() else [])


def test_outputs_exist(run):
    _, out, manifest, _ = run
    for name in (
        "manifest.json",
        "config.yaml",
        "quarantine.jsonl",
        "decontamination.md",
        "decontamination.parquet",
        "decontamination.csv",
    ):
        assert (out / name).is_file(), name
    assert (out / "train" / "part-00000.parquet").is_file()
    assert json.loads((out / "manifest.json").read_text())["totals"] == manifest["totals"]
    assert not list(out.parent.glob(".out.tmp-*"))


def test_counts_reconcile_per_source(run):
    _, out, manifest, _ = run
    cats = (
        "kept",
        "quarantined",
        "sampled_out",
        "filtered",
        "deduplicated",
        "near_deduplicated",
        "decontaminated",
    )
    for name, c in {**manifest["sources"], "TOTAL": manifest["totals"]}.items():
        assert c["read"] == sum(c[k] for k in cats), name
    kept_written = sum(1 for r in _all_rows(out) if r["epoch"] == 0)
    assert kept_written == manifest["totals"]["kept"]
    assert (
        manifest["sources"]["alpaca"]["rows_written_train"]
        == 2 * manifest["sources"]["alpaca"]["kept_train"]
    )


def test_schema_and_system_prompt(run):
    cfg, out, _, _ = run
    rows = _all_rows(out)
    assert set(rows[0]) == {"id", "source", "messages", "source_file", "row", "epoch"}
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles[0] == "system" and "assistant" in roles and "user" in roles
        assert set(roles) <= {"system", "user", "assistant"}
    by_src = {r["source"] for r in rows}
    assert by_src >= {
        "alpaca",
        "sharegpt",
        "messages",
        "medqa",
        "medmcqa",
        "pubmedqa",
        "flashcards",
    }
    sg = next(r for r in rows if r["id"] == "sharegpt:sharegpt.json:1")
    assert sg["messages"][0]["content"] == "You are a careful clinical pharmacist."
    sg0 = next(r for r in rows if r["id"] == "sharegpt:sharegpt.json:0")
    assert sg0["messages"][0]["content"] == cfg.data.system_prompt


def test_every_filter_reason_counted(run):
    _, _out, manifest, _ = run
    f = manifest["sources"]["filters"]
    assert f["filtered_by_reason"] == {
        "dropped_empty_turn": 1,
        "dropped_no_assistant": 1,
        "dropped_non_text": 1,
        "dropped_language": 1,
        "dropped_too_short": 1,
        "dropped_too_long": 1,
    }
    assert f["kept"] == 1


def test_exact_and_near_dedup(run):
    _, out, manifest, _ = run
    d = manifest["sources"]["dups"]
    # sodium card (case/space/punct copy), scurvy card (copy of an earlier source), AKI near-dup
    assert d["deduplicated"] == 2 and d["near_deduplicated"] == 1 and d["kept"] == 2
    ids = {r["id"] for r in _all_rows(out)}
    assert "dups:dups.jsonl:0" in ids and "dups:dups.jsonl:1" not in ids
    assert "flashcards:flashcards.jsonl:1" in ids and "dups:dups.jsonl:2" not in ids
    assert "dups:dups.jsonl:3" in ids and "dups:dups.jsonl:4" not in ids
    assert manifest["near_dedup"]["verified_pairs"] >= 1


def test_quarantine_file(run):
    _, out, manifest, _ = run
    lines = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert {(q["file"], q["line"], q["reason"]) for q in lines} == {
        ("bad.jsonl", 2, "malformed_json"),
        ("bad.jsonl", 3, "missing_field:question"),
        ("bad.jsonl", 4, "wrong_type:question"),
        ("bad.jsonl", 5, "invalid_utf8"),
        ("bad.jsonl", 6, "not_an_object"),
    }
    assert manifest["sources"]["bad"]["quarantined"] == 5
    assert manifest["sources"]["bad"]["kept"] == 2


def test_decontamination_catches_all_variants_and_keeps_hard_negatives(run):
    _, out, manifest, _ = run
    assert manifest["sources"]["contaminated"]["decontaminated"] == 8
    assert manifest["sources"]["contaminated"]["kept"] == 0
    hn = manifest["sources"]["hard_negatives"]
    assert hn["decontaminated"] == 0 and hn["kept"] == hn["read"] >= 30
    assert manifest["totals"]["decontaminated"] == 8
    report = pq.read_table(out / "decontamination.parquet").to_pandas()
    assert len(report) == 8
    variants = [
        json.loads(x)["benchmark"] for x in (D / "contaminated.jsonl").read_text().splitlines()
    ]
    assert sorted(report["benchmark"]) == sorted(variants)
    assert set(report.columns) >= {"record_id", "source", "benchmark", "item_id", "match", "method"}
    md = (out / "decontamination.md").read_text()
    assert "n = **13**" in md and "threshold = **0.0**" in md and "| medqa |" in md


def test_mixture_weight_cap_epochs(run):
    _, _out, manifest, _ = run
    w = manifest["sources"]["mix_weight"]
    assert w["read"] == 200 and 70 < w["kept"] < 130 and w["sampled_out"] == 200 - w["kept"]
    cap = manifest["sources"]["mix_cap"]
    assert cap["kept"] == 10 and cap["sampled_out"] == 50


def test_eval_split_and_shards(run):
    _, out, manifest, _ = run
    ev = _rows(out, "eval")
    assert 0 < len(ev) == manifest["totals"]["kept_eval"]
    train_ids = {r["id"].split("@")[0] for r in _rows(out)}
    assert not train_ids & {r["id"] for r in ev}
    shards = manifest["outputs"]["train"]
    names = [f"train/part-{i:05d}.parquet" for i in range(len(shards))]
    assert [s["path"] for s in shards] == names
    assert all(s["rows"] == 40 for s in shards[:-1])


def test_deterministic_whatever_the_parallelism(run):
    from med42ray.data import prepare_data

    cfg, _out, manifest, tmp = run
    again = prepare_data(cfg, tmp / "again", num_blocks=1, concurrency=1, verbose=False)
    assert again["outputs"] == manifest["outputs"]
    for s in manifest["outputs"]["train"]:
        assert hashlib.sha256((tmp / "again" / s["path"]).read_bytes()).hexdigest() == s["sha256"]


def test_rerun_replaces_and_failure_keeps_earlier_output(run, tmp_path):
    from med42ray.data import DataError, prepare_data

    _cfg, out, _manifest, tmp = run
    before = (out / "manifest.json").read_bytes()
    bad = parse_config(
        {
            **data_config(tmp),
            "data": {
                **data_config(tmp)["data"],
                "max_quarantine_rate": 0.05,
                "sources": [{"name": "bad", "path": str(C / "bad.jsonl"), "format": "qa"}],
            },
        }
    )
    with pytest.raises(DataError, match=r"source 'bad'.*bad.jsonl.*max_quarantine_rate"):
        prepare_data(bad, out, verbose=False)
    assert (out / "manifest.json").read_bytes() == before


def test_unreadable_source_fails_clearly(ray_session, tmp_path):
    from med42ray.data import DataError, prepare_data

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file")
    cfg = parse_config(
        {"data": {"sources": [{"name": "broken", "path": str(broken), "format": "qa"}]}}
    )
    with pytest.raises(DataError, match=r"source 'broken'.*broken.parquet.*unreadable"):
        prepare_data(cfg, tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()


def test_exact_groups_without_any_duplicate_is_empty(ray_session) -> None:
    import pyarrow as pa
    import ray

    from med42ray.data.dedup import exact_groups

    rows = pa.table({"dkey": ["a", "b", "c"], "order": [0, 1, 2], "drop": ["", "", ""]})
    assert exact_groups(ray.data.from_arrow(rows)) == {}
    rows = rows.set_column(0, "dkey", pa.array(["a", "b", "a"]))
    assert exact_groups(ray.data.from_arrow(rows)) == {"a": 0}


def test_groupbys_use_the_sort_shuffle_whatever_the_global_default(ray_session) -> None:
    """A Dataset keeps the DataContext it was made under: the strategy must be set on the
    dataset itself (Ray 2.60's default, SHUFFLE_V2, stalls ~10 s per small groupby)."""
    import pyarrow as pa
    import ray
    from ray.data.context import DataContext, ShuffleStrategy

    from med42ray.data.steps import sort_shuffled

    ctx = DataContext.get_current()
    saved = ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.SHUFFLE_V2
    try:
        ds = ray.data.from_arrow(pa.table({"k": [1, 2, 1]}))
        assert ds.context.shuffle_strategy == ShuffleStrategy.SHUFFLE_V2
        keyed = sort_shuffled(ds.map_batches(lambda b: b, batch_format="pyarrow"))
        assert keyed.context.shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        assert keyed.groupby("k").count().sort("k").take_all() == [
            {"k": 1, "count()": 2},
            {"k": 2, "count()": 1},
        ]
    finally:
        ctx.shuffle_strategy = saved
