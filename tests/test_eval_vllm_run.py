"""The vLLM engine end to end: `run_eval` with `eval.engine: vllm` in a Ray actor, against the
Transformers engine on the same items (same predictions, log-likelihoods within 1e-3).

Lettered options exercise the one-prefill path, option texts (cloze, HeadQA) the prompt
logprobs read on the prefix cache, generation the greedy path; the engine is built without LoRA,
as `run_eval` builds it for a base model.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from med42ray.config import parse_config

FIX = Path(__file__).parent / "fixtures" / "benchmarks"
BENCHMARKS = [
    {"name": "medqa", "path": str(FIX / "medqa.jsonl")},
    {"name": "headqa", "path": str(FIX / "headqa.jsonl")},
]
PROTOCOLS = [
    {"scoring": "loglikelihood", "prompt_format": "multiple_choice"},
    {"scoring": "loglikelihood", "prompt_format": "cloze"},
    {"scoring": "generate"},
]


def config(tiny_config, engine: str):
    raw = tiny_config.model_dump(mode="json")
    raw["eval"].update(
        benchmarks=BENCHMARKS, protocols=PROTOCOLS, engine=engine, batch_size=4,
        max_model_len=512, max_new_tokens=4, num_actors=1,
    )  # fmt: skip
    return parse_config(raw)


def test_vllm_run_eval_matches_transformers(tiny_config, tiny_model_path, ray_session, tmp_path):
    from med42ray.eval import run_eval

    out = {}
    for engine in ("vllm", "hf"):
        summary = run_eval(config(tiny_config, engine), tmp_path / engine)
        assert set(summary["engine"]) == {engine}
        out[engine] = pd.read_parquet(tmp_path / engine / "predictions.parquet")
    vllm, hf = out["vllm"], out["hf"]
    assert len(vllm) == len(hf) == 3 * (5 + 4)
    keys = ["protocol", "benchmark", "item_id"]
    assert vllm[keys].values.tolist() == hf[keys].values.tolist()
    scored = vllm["protocol"] != "generate"
    assert vllm.loc[scored, "pred"].tolist() == hf.loc[scored, "pred"].tolist()
    assert vllm.loc[scored, "pred_norm"].tolist() == hf.loc[scored, "pred_norm"].tolist()
    for a, b in zip(vllm.loc[scored, "loglikelihoods"], hf.loc[scored, "loglikelihoods"],
                    strict=True):  # fmt: skip
        assert list(a) == pytest.approx(list(b), abs=1e-3)
    cloze = vllm[(vllm["protocol"] == "cloze") & (vllm["benchmark"] == "medqa")]
    assert len(cloze) == 5  # option texts: several tokens each, the prompt-logprobs path
    assert vllm.loc[~scored, "generation"].map(len).gt(0).all()
