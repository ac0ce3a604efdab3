"""run_eval end to end: the Ray Data actor pool, outputs, resume after a crash, generation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from med42ray.config import parse_config

FIX = Path(__file__).parent / "fixtures" / "benchmarks"
BENCHMARKS = [
    {"name": "medqa", "path": str(FIX / "medqa.jsonl")},
    {"name": "headqa", "path": str(FIX / "headqa.jsonl")},
    {"name": "pubmedqa", "path": str(FIX / "pubmedqa_labeled.jsonl")},
    {"name": "mmlu_anatomy", "path": str(FIX / "mmlu_anatomy.jsonl")},
    {"name": "usmle_sample_exam", "path": str(FIX / "usmle.jsonl")},
    {"name": "usmle_self_assessment", "path": str(FIX / "usmle.jsonl")},
]
N_ITEMS = 5 + 4 + 4 + 4 + 4 + 4


def config(tiny_config, **eval_overrides):
    raw = tiny_config.model_dump(mode="json")
    raw["eval"].update({"benchmarks": BENCHMARKS, "batch_size": 2, **eval_overrides})
    return parse_config(raw)


@pytest.fixture(scope="module")
def full_run(tiny_config, tiny_model_path, ray_session, tmp_path_factory):
    from med42ray.eval import run_eval

    out = tmp_path_factory.mktemp("eval-full")
    summary = run_eval(config(tiny_config, num_actors=2), out)
    return out, summary


def test_outputs_and_scores(full_run, tiny_config, tiny_model_path):
    from med42ray.eval.engines import HFEngine

    out, summary = full_run
    for name in ["predictions.parquet", "predictions.jsonl", "summary.csv", "summary.md",
                 "eval.json", "config.yaml"]:  # fmt: skip
        assert (out / name).is_file(), name
    preds = pd.read_parquet(out / "predictions.parquet")
    assert len(preds) == N_ITEMS
    assert len(pd.read_json(out / "predictions.jsonl", lines=True)) == N_ITEMS
    assert {"benchmark", "item_id", "prompt_hash", "loglikelihoods", "pred", "pred_norm",
            "gold", "correct"} <= set(preds.columns)  # fmt: skip
    assert (preds["correct"] == (preds["pred"] == preds["gold"])).all()
    # the actor pool's scores are the in-process engine's
    engine = HFEngine(str(tiny_model_path), tiny_config.model, tiny_config.eval)
    from med42ray.benchmarks import load_benchmark, load_task
    from med42ray.eval.prompts import PromptFormat

    fmt = PromptFormat(load_task("headqa"))
    items = load_benchmark("headqa", str(FIX / "headqa.jsonl"))
    got = preds[preds["benchmark"] == "headqa"].set_index("item_id")
    for item in items:
        prompt = fmt.render(item)
        lls = engine.loglikelihood([(prompt.context, c) for c in prompt.continuations])
        assert list(got.loc[item.id, "loglikelihoods"]) == pytest.approx(lls, abs=1e-4)
        assert got.loc[item.id, "prompt_hash"] == prompt.hash

    rows = summary.set_index(["level", "benchmark"])
    task_rows = summary[summary["level"] == "task"]
    assert sorted(task_rows["benchmark"]) == sorted(b["name"] for b in BENCHMARKS)
    for _, r in task_rows.iterrows():
        part = preds[preds["benchmark"] == r["benchmark"]]
        assert r["n"] == len(part) and r["acc"] == pytest.approx(part["correct"].mean())
        assert r["prompt_version"] and r["model"] == "tiny" and r["engine"] == "hf"
    usmle = rows.loc[("group", "usmle")]
    members = [rows.loc[("task", t), "acc"] for t in ["usmle_sample_exam", "usmle_self_assessment"]]
    assert usmle["acc"] == pytest.approx(sum(members) / 2)
    assert set(summary.loc[summary["benchmark"] == "usmle_sample_exam", "subset"]) == {
        "",
        "1",
        "2",
        "3",
    }
    assert "| group | usmle |" in (out / "summary.md").read_text()
    assert json.loads((out / "eval.json").read_text())["scored"] > 0


def test_resume_after_crash_scores_only_missing(full_run, tiny_config, ray_session, tmp_path):
    from med42ray.eval import run_eval

    cfg = config(tiny_config, num_actors=1)
    with pytest.raises(Exception, match="simulated crash"):
        run_eval(cfg, tmp_path, _fail_after_parts=2)
    (parts_dir,) = (tmp_path / "parts").iterdir()
    survived = sum(len(pd.read_parquet(p)) for p in parts_dir.glob("part-*.parquet"))
    assert survived > 0
    assert not (tmp_path / "summary.csv").exists()  # the crashed run wrote no tables

    run_eval(cfg, tmp_path)
    record = json.loads((tmp_path / "eval.json").read_text())
    # batches already in flight when the crash surfaced may still have landed their parts
    assert record["resumed"] >= survived
    assert record["scored"] == record["requests"] - record["resumed"] > 0

    full_out, _ = full_run
    a = pd.read_parquet(full_out / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "predictions.parquet")
    assert list(a["item_id"]) == list(b["item_id"])
    assert list(a["pred"]) == list(b["pred"]) and list(a["pred_norm"]) == list(b["pred_norm"])
    for x, y in zip(a["loglikelihoods"], b["loglikelihoods"], strict=True):
        assert list(x) == pytest.approx(list(y), abs=1e-4)

    run_eval(cfg, tmp_path)  # nothing left: no engine starts, same tables
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["scored"] == 0 and again["resumed"] == again["requests"]


def test_generate_scoring(tiny_config, ray_session, tmp_path):
    from med42ray.eval import run_eval

    raw = tiny_config.model_dump(mode="json")
    raw["eval"].update(
        benchmarks=BENCHMARKS[:3], scoring="generate", max_new_tokens=4, batch_size=4
    )
    summary = run_eval(parse_config(raw), tmp_path, label="tiny-gen")
    preds = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(preds) == 5 + 4 + 4 and preds["generation"].map(len).gt(0).all()
    assert (preds.loc[~preds["parsed"], "pred"] == -1).all()
    task = summary[summary["level"] == "task"].set_index("benchmark")
    for name, part in preds.groupby("benchmark"):
        assert task.loc[name, "unparsed"] == pytest.approx((~part["parsed"]).mean())
        assert task.loc[name, "acc"] == pytest.approx(part["correct"].mean())
    assert set(summary["model"]) == {"tiny-gen"} and set(summary["scoring"]) == {"generate"}
