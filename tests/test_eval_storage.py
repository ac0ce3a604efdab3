"""run_eval on a shared-nothing cluster's terms: the model and the parts in object storage.

The model is an S3 URI (the tiny model uploaded, as a training stage exports it): the actors
copy it onto their node, the driver fetches only the tokenizer's files; the parts go to S3, so
a second run with nothing local (another node, after a job restart) resumes from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from med42ray import storage
from med42ray.config import parse_config

FIX = Path(__file__).parent / "fixtures" / "benchmarks"


def small_eval(tiny_config):
    raw = tiny_config.model_dump(mode="json")
    benchmarks = [
        {"name": "medqa", "path": str(FIX / "medqa.jsonl"), "limit": 3},
        {"name": "headqa", "path": str(FIX / "headqa.jsonl"), "limit": 2},
    ]
    raw["eval"].update({"benchmarks": benchmarks, "batch_size": 2, "num_actors": 1})
    return parse_config(raw)


def test_eval_of_a_model_in_object_storage(
    tiny_config, tiny_model_path, ray_session, s3_bucket, tmp_path
):
    from med42ray.eval import run_eval

    cfg = small_eval(tiny_config)
    run_eval(cfg, tmp_path / "local", model=str(tiny_model_path))
    local = pd.read_parquet(tmp_path / "local" / "predictions.parquet")

    model = f"{s3_bucket}/run/train-full-abc/model"
    storage.upload(tiny_model_path, model)
    weights = sum(p.stat().st_size for p in tiny_model_path.glob("*.safetensors"))
    parts = f"{s3_bucket}/run/eval-full/parts"
    before = storage.transfers()["downloaded_bytes"]
    run_eval(cfg, tmp_path / "s3", model=model, parts=parts)
    fetched = storage.transfers()["downloaded_bytes"] - before
    assert 0 < fetched < weights  # the tokenizer's files and the parts, not the weights

    record = json.loads((tmp_path / "s3" / "eval.json").read_text())
    assert record["model_path"] == model and record["parts"].startswith(parts + "/")
    assert record["scored"] == record["requests"] > 0
    assert record["transfers"]["driver"]["downloaded_bytes"] == fetched
    assert record["transfers"]["actors"]["downloaded_bytes"] >= weights  # the actor's copy
    names = storage.list_files(record["parts"])
    assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names)
    assert not (tmp_path / "s3" / "parts").exists()

    remote = pd.read_parquet(tmp_path / "s3" / "predictions.parquet")
    assert len(remote) == 5 and list(remote["item_id"]) == list(local["item_id"])
    assert list(remote["pred"]) == list(local["pred"])
    for x, y in zip(remote["loglikelihoods"], local["loglikelihoods"], strict=True):
        assert list(x) == pytest.approx(list(y), abs=1e-5)

    # a restarted job, nothing local left: everything comes from the parts in S3
    run_eval(cfg, tmp_path / "again", model=model, parts=parts)
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert again["run_key"] == record["run_key"]
    assert again["scored"] == 0 and again["resumed"] == again["requests"]
    assert again["transfers"]["actors"] is None  # no engine started
    resumed = pd.read_parquet(tmp_path / "again" / "predictions.parquet")
    assert list(resumed["pred"]) == list(remote["pred"])
