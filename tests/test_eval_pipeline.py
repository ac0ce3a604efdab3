"""run_eval end to end: the Ray Data actor pool, outputs, resume after a crash, generation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from med42ray.config import parse_config

from .conftest import small_config

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
        benchmarks=BENCHMARKS[:3], protocols=None, scoring="generate", max_new_tokens=4,
        batch_size=4,
    )  # fmt: skip
    summary = run_eval(parse_config(raw), tmp_path, label="tiny-gen")
    preds = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(preds) == 5 + 4 + 4 and preds["generation"].map(len).gt(0).all()
    assert (preds.loc[~preds["parsed"], "pred"] == -1).all()
    task = summary[summary["level"] == "task"].set_index("benchmark")
    for name, part in preds.groupby("benchmark"):
        assert task.loc[name, "unparsed"] == pytest.approx((~part["parsed"]).mean())
        assert task.loc[name, "acc"] == pytest.approx(part["correct"].mean())
    assert set(summary["model"]) == {"tiny-gen"} and set(summary["scoring"]) == {"generate"}


# ------------------------------------------------------------------------------- protocols
LETTER = {"scoring": "loglikelihood", "prompt_format": "multiple_choice"}
CLOZE = {"scoring": "loglikelihood", "prompt_format": "cloze"}
GENERATE_CHAT = {"scoring": "generate", "chat_template": True}


def test_protocols_side_by_side_from_one_actor_pool(full_run, tiny_config, ray_session, tmp_path):
    """Letter, cloze and generate+chat from one run: one engine actor scores them all, each
    protocol has its own parts under its own run key, and adding a protocol rescores nothing
    that was scored (here, nor in a later evaluation that adopts the earlier parts)."""
    from med42ray.eval import run_eval
    from med42ray.eval.metrics import ALL_ITEMS

    benchmarks = {"benchmarks": BENCHMARKS[:3], "max_new_tokens": 4}
    first = run_eval(config(tiny_config, protocols=[LETTER], **benchmarks), tmp_path / "one")
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    cfg = config(tiny_config, protocols=[LETTER, CLOZE, GENERATE_CHAT], **benchmarks)
    summary = run_eval(cfg, tmp_path / "one")  # the same folder: cloze and generation added
    record = json.loads((tmp_path / "one" / "eval.json").read_text())
    protocols = record["protocols"]
    assert list(protocols) == ["letter", "cloze", "generate+chat"]
    assert protocols["letter"]["run_key"] == one["run_key"]  # unchanged: not scored again
    assert protocols["letter"]["resumed"] == protocols["letter"]["requests"] == one["requests"]
    assert (
        record["scored"] == protocols["cloze"]["requests"] + protocols["generate+chat"]["requests"]
    )
    assert len({p["parts"] for p in protocols.values()}) == 3
    assert record["transfers"]["actors"]["actors"] == 1  # one engine for every protocol

    preds = pd.read_parquet(tmp_path / "one" / "predictions.parquet")
    n_items = 5 + 4 + 4
    assert preds.groupby("protocol").size().to_dict() == dict.fromkeys(protocols, n_items)
    letter = preds[preds["protocol"] == "letter"].reset_index(drop=True)
    before = pd.read_parquet(full_run[0] / "predictions.parquet")
    before = before[before["benchmark"].isin(set(letter["benchmark"]))].reset_index(drop=True)
    assert list(letter["pred"]) == list(before["pred"])  # the single-protocol run's answers
    gen = preds[preds["protocol"] == "generate+chat"]
    assert (
        gen["prompt_format"].str.endswith(":chat").all() and gen["generation"].map(len).gt(0).all()
    )
    cloze = preds[(preds["protocol"] == "cloze") & (preds["benchmark"] == "medqa")]
    assert all(len(c) > 1 for choices in cloze["choices"] for c in choices)  # option texts

    task = summary[summary["level"] == "task"].set_index(["protocol", "benchmark"])
    assert len(task) == 3 * 3 and set(summary["scoring"]) == {"loglikelihood", "generate"}
    for (protocol, bench), part in preds.groupby(["protocol", "benchmark"]):
        assert task.loc[(protocol, bench), "acc"] == pytest.approx(part["correct"].mean())
    first_task = first[first["level"] == "task"].set_index("benchmark")["acc"]
    assert task.xs("letter", level="protocol")["acc"].to_dict() == first_task.to_dict()

    agreement = pd.read_csv(tmp_path / "one" / "agreement.csv")
    wide = preds.pivot_table(index=["benchmark", "item_id"], columns="protocol", values="pred")
    row = agreement.set_index(["benchmark", "protocol_a", "protocol_b"])
    for a, b in [("letter", "cloze"), ("letter", "generate+chat"), ("cloze", "generate+chat")]:
        same = (wide[a] == wide[b]) & (wide[a] >= 0)
        assert row.loc[(ALL_ITEMS, a, b), "agree"] == pytest.approx(same.mean())
        assert row.loc[("medqa", a, b), "n"] == 5
        assert row.loc[("medqa", a, b), "agree"] == pytest.approx(same.loc["medqa"].mean())

    # a later evaluation elsewhere adopts these parts: nothing is scored again
    run_eval(cfg, tmp_path / "two", earlier_parts=[str(tmp_path / "one" / "parts")])
    again = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert again["scored"] == 0 and again["resumed"] == again["requests"] == record["requests"]
    assert pd.read_parquet(tmp_path / "two" / "predictions.parquet")["pred"].tolist() == (
        preds["pred"].tolist()
    )


def test_protocol_lists_make_the_valid_combinations():
    from med42ray.config import ConfigError

    axes = {"eval.protocols": None, "eval.scoring": ["loglikelihood", "generate"],
            "eval.prompt_format": ["multiple_choice", "cloze"]}  # fmt: skip
    cfg = small_config(overrides=axes)
    assert [p.label for p in cfg.eval.resolved_protocols()] == ["letter", "cloze", "generate"]
    chat = small_config(overrides={**axes, "eval.use_chat_template": [False, True]})
    assert [p.label for p in chat.eval.resolved_protocols()][3:] == [
        "letter+chat", "cloze+chat", "generate+chat",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=r"give eval\.protocols or eval\.scoring, not both"):
        small_config(overrides={"eval.scoring": "generate"})
    with pytest.raises(ConfigError, match=r"cloze needs eval\.scoring loglikelihood"):
        small_config(
            overrides={"eval.protocols": [{"scoring": "generate", "prompt_format": "cloze"}]}
        )
    with pytest.raises(ConfigError, match="names must be unique"):
        small_config(overrides={"eval.protocols": [LETTER, {**CLOZE, "name": "letter"}]})


# ------------------------------------------------------------------------------- placement
def test_actor_placement_from_config():
    from med42ray.config import EvalConfig, ResourcesConfig
    from med42ray.eval.placement import actor_placement

    cpu = actor_placement(EvalConfig(), ResourcesConfig())
    assert (cpu.num_cpus, cpu.num_gpus, cpu.resources, cpu.bundles) == (1, 0, {}, None)
    fake = ResourcesConfig(accelerator_resource="fake_gpu")
    assert actor_placement(EvalConfig(), fake).resources == {"fake_gpu": 1}  # one per actor
    gpu = actor_placement(EvalConfig(gpus_per_actor=2), fake)
    assert gpu.num_gpus == 2 and gpu.resources == {"fake_gpu": 2} and gpu.bundles is None

    tp = EvalConfig(engine="vllm", gpus_per_actor=1, tensor_parallel_size=3)
    vllm = actor_placement(tp, fake)  # vLLM's Ray workers take the bundles' GPUs
    assert vllm.bundles == [{"CPU": 1, "GPU": 1, "fake_gpu": 1}] + [{"GPU": 1, "fake_gpu": 1}] * 2
    assert (vllm.num_cpus, vllm.num_gpus, vllm.resources, vllm.strategy) == (
        1, 0, {}, "STRICT_PACK",
    )  # fmt: skip
    hf = actor_placement(tp.model_copy(update={"engine": "hf"}), ResourcesConfig())
    assert hf.num_gpus == 1 and hf.bundles == [{"CPU": 1, "GPU": 1}] + [{"GPU": 1}] * 2
    rehearsal = actor_placement(EvalConfig(tensor_parallel_size=2), fake)
    assert rehearsal.bundles == [{"CPU": 1, "fake_gpu": 1}, {"fake_gpu": 1}]
    assert rehearsal.resources == {"fake_gpu": 1} and rehearsal.num_gpus == 0
    plain = actor_placement(EvalConfig(tensor_parallel_size=2), ResourcesConfig())
    assert plain.bundles == [{"CPU": 1}, {"CPU": 1}]


#: Run in a Ray of its own (2 CPUs and 4 `fake_gpu`, the cluster rehearsal's stand-in for GPUs):
#: run_eval with the placement groups' tables recorded as they are created.
TP_SCRIPT = """
import json, sys
import ray
import med42ray.eval.placement as placement
from med42ray.config import parse_config
from med42ray.eval import run_eval

ray.init(address="local", num_cpus=2, resources={"fake_gpu": 4}, include_dashboard=False)
seen, create = [], placement.create_groups
def spy(spec, n):
    groups = create(spec, n)
    seen.extend(ray.util.placement_group_table(g) for g in groups)
    return groups
placement.create_groups = spy
run_eval(parse_config(json.loads(open(sys.argv[1]).read())), sys.argv[2])
table = ray.util.placement_group_table()
after = {g["placement_group_id"]: table[g["placement_group_id"]]["state"] for g in seen}
print("RESULT " + json.dumps({"seen": seen, "after": after}, default=str))
"""


def test_tensor_parallel_actors_get_placement_groups(full_run, tiny_config, tmp_path):
    import os
    import subprocess
    import sys

    cfg = config(tiny_config, num_actors=2, tensor_parallel_size=2)
    raw = cfg.model_dump(mode="json")
    raw["eval"]["benchmarks"] = BENCHMARKS[:2]
    raw["resources"]["accelerator_resource"] = "fake_gpu"
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", TP_SCRIPT, str(tmp_path / "cfg.json"), str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))

    assert len(result["seen"]) == 2  # one group per actor
    for table in result["seen"]:
        assert table["strategy"] == "STRICT_PACK" and table["state"] == "CREATED"
        assert [b["fake_gpu"] for b in table["bundles"].values()] == [1, 1]
        assert len(set(table["bundles_to_node_id"].values())) == 1  # one node
    assert set(result["after"].values()) == {"REMOVED"}  # the groups end with the scoring
    record = json.loads((tmp_path / "out" / "eval.json").read_text())
    groups = {t["placement_group_id"] for t in result["seen"]}
    assert {a["placement_group"] for a in record["placement"]["actors"]} == groups
    assert record["placement"]["bundles"] == [{"CPU": 1, "fake_gpu": 1}, {"fake_gpu": 1}]

    # tensor parallelism is placement only here: the Transformers engine scores as without it
    a = pd.read_parquet(full_run[0] / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    a = a[a["benchmark"].isin(set(b["benchmark"]))].reset_index(drop=True)
    assert list(a["item_id"]) == list(b["item_id"]) and list(a["pred"]) == list(b["pred"])
    for x, y in zip(a["loglikelihoods"], b["loglikelihoods"], strict=True):
        assert list(x) == pytest.approx(list(y), abs=1e-4)


def test_eval_limit_scores_the_first_items_of_every_benchmark(tiny_config, tiny_model_path):
    """`eval.limit` (lm-eval's --limit) cuts every benchmark; a benchmark's own limit wins."""
    from transformers import AutoTokenizer

    from med42ray.eval.runner import prepare_tasks

    benchmarks = [b.model_dump(mode="json") for b in tiny_config.eval.benchmarks[:2]]
    benchmarks[1]["limit"] = 2
    cfg = small_config(overrides={"eval.benchmarks": benchmarks, "eval.limit": 3})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    runs = prepare_tasks(cfg, tokenizer)
    assert [len(r.items) for r in runs] == [3, 2]
    assert [r.provenance["scored"] for r in runs] == [3, 2]
