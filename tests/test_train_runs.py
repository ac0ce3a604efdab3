"""End-to-end training on 2 Ray workers (CPU): ZeRO-2/3 vs DDP, LoRA, resume, a killed worker,
and a run on object storage only (S3: data, checkpoints, export; LoRA merged in a Ray task).

The runs are shared between tests (module fixtures) and kept tiny: 6 optimiser steps of
2 packed rows of 128 tokens per worker, as 2 accumulated micro-batches of one row (so label
tokens fall unevenly across micro-batches and workers), constant learning rate so that a run
cut at step 3 and resumed follows the same schedule as an uninterrupted one (the schedule's
horizon is `max_steps`). Eight `fit()`s in all, one of them restarted after a worker dies:
each `fit()` costs ~40 s of process start-up and imports on 2 cores, so every run serves
several tests.

Backend parity (the field has seen one SFT recipe score 28.3 on MMLU under one backend and 41.4
under another): DDP, ZeRO-2 and ZeRO-3 give the same loss and gradient-norm curves, for full
fine-tuning and for LoRA, within `PARITY_RTOL`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import small_config

FIXTURE = Path(__file__).parent / "fixtures" / "train" / "chat.jsonl"
STEPS = 6
BASE = {
    "train.max_seq_len": 128,
    "train.micro_batch_size": 1,
    "train.gradient_accumulation_steps": 2,
    "train.max_steps": STEPS,
    "train.schedule.name": "constant",
    "train.schedule.warmup_ratio": 0.0,
    "train.checkpoint_every": None,
    "train.max_failures": 0,
}


def config(**overrides):
    return small_config(overrides={**BASE, **overrides})


def curve(result, key: str = "loss") -> list[float]:
    rows = [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r[key] for r in rows]


def losses(result) -> list[float]:
    return curve(result, "loss")


#: DDP, ZeRO-2 and ZeRO-3 on the same data: loss and gradient-norm curves agree this closely
#: (fp32 on CPU; the differences are summation order in the reductions)
PARITY_RTOL = 1e-4


@pytest.fixture(scope="module")
def train(ray_session, tiny_model_path, tmp_path_factory):
    """run_training into a fresh folder, shared Ray session."""
    from med42ray.checkpoint_eval import curve_validation
    from med42ray.train import run_training

    def _run(name, cfg, out=None, score_curve=True, **kwargs):
        out = out or tmp_path_factory.mktemp(name)
        where = str(kwargs.get("export_to") or Path(out).resolve())
        validation = curve_validation(cfg, where) if score_curve else None
        return run_training(cfg, FIXTURE, out, validation=validation, **kwargs)

    return _run


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    """One bucket for this module's object-storage runs."""
    import urllib.request
    import uuid

    name = f"train-runs-{uuid.uuid4().hex[:8]}"
    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/{name}", method="PUT"))
    return f"s3://{name}"


@pytest.fixture(scope="module")
def ddp_run(train):
    return train("ddp", config(**{"train.deepspeed.enabled": False}))


@pytest.fixture(scope="module")
def one_worker_run(train):
    """DDP on one worker reading the two fixed data shards `ddp_run`'s two workers read, with
    the same 4 rows a step (2 micro-batches of 2 rows instead of 2 x 2 of 1). Its config asks
    for a benchmark curve but the trainer gets no validation task (as a sweep trial, the
    training bench): no checkpoint may ask Ray Train to score itself."""
    settings = {"resources.num_workers": 1, "train.data_shards": 2, "train.micro_batch_size": 2}
    settings["train.curve"] = {"eval_every_checkpoint": 1, "benchmarks": ["medqa"]}
    cfg = config(**{"train.deepspeed.enabled": False, **settings})
    return train("one_worker", cfg, score_curve=False)


@pytest.fixture(scope="module")
def zero2_run(train, tmp_path_factory):
    """ZeRO-2, uninterrupted, with a held-out split: the reference for resume and recovery."""
    held_out = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    held_out.write_text("".join(FIXTURE.read_text().splitlines(keepends=True)[:8]))
    cfg = config(**{"train.deepspeed.zero_stage": 2, "train.eval_every": 3})
    return train("zero2", cfg, eval_data=held_out)


@pytest.fixture(scope="module")
def zero3_run(train):
    return train("zero3", config(**{"train.deepspeed.zero_stage": 3}))


LORA = {"train.strategy": "lora", "train.optimizer.lr": 1e-2}


@pytest.fixture(scope="module")
def lora_run(train, bucket):
    """LoRA under ZeRO-2, exported to object storage and merged there in a Ray task."""
    cfg = config(**LORA, **{"train.deepspeed.zero_stage": 2, "train.lora.merge_on_export": True})
    return train("lora", cfg, export_to=f"{bucket}/lora")


@pytest.fixture(scope="module")
def lora_ddp_run(train):
    return train("lora_ddp", config(**LORA, **{"train.deepspeed.enabled": False}))


def generate(model, tokenizer) -> str:
    chat = [{"role": "user", "content": "Which vitamin deficiency causes scurvy?"}]
    inputs = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


# ---------------------------------------------------------------------------- full
def test_full_loss_decreases_and_metrics_are_reported(zero2_run):
    curve = losses(zero2_run)
    assert len(curve) == STEPS and curve[-1] < curve[0] - 0.2
    rows = [json.loads(x) for x in zero2_run.metrics_path.read_text().splitlines()]
    for key in (
        "lr",
        "tokens_per_s",
        "real_tokens_per_s",
        "samples_per_s",
        "step_time_s",
        "peak_memory_mb",
        "grad_norm",
        "model_tflops_per_s_per_device",
    ):
        assert all(r[key] > 0 for r in rows), key
    # packed micro-batches are flattened: the rows' padding tails are never computed
    assert all(
        r["padding_share"] == 0 and r["tokens_per_s"] == r["real_tokens_per_s"] for r in rows
    )
    assert 0 < zero2_run.state["data"]["packed_padding_share"] < 0.1
    assert [r["step"] for r in rows if "eval_loss" in r] == [3, 6]
    assert rows[-1]["eval_loss"] < rows[2]["eval_loss"]
    assert zero2_run.trainable_params == zero2_run.total_params > 0
    assert zero2_run.final_metrics["step"] == STEPS
    assert zero2_run.state["engine"] == "DeepSpeedEngine"


def test_full_export_loads_and_generates(zero2_run, tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (zero2_run.model_dir / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(zero2_run.model_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(zero2_run.model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), base.state_dict().values(), strict=True)
    ]
    assert all(changed)  # every tensor trained
    generate(model, tokenizer)


# --------------------------------------------------------------------- equivalence
def test_zero3_matches_ddp_and_gathers_the_full_weights(zero3_run, ddp_run):
    from safetensors.torch import load_file

    torch.testing.assert_close(
        torch.tensor(losses(zero3_run)), torch.tensor(losses(ddp_run)), rtol=1e-3, atol=0
    )
    z3 = load_file(zero3_run.model_dir / "model.safetensors")
    ref = load_file(ddp_run.model_dir / "model.safetensors")
    assert z3.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(z3[name], ref[name], atol=2e-4, rtol=1e-3, msg=name)


def assert_same_curves(run, reference) -> None:
    assert (run.state["engine"], reference.state["engine"]) == ("DeepSpeedEngine", "DDPEngine")
    assert_curves_close(run, reference)


def assert_curves_close(run, reference) -> None:
    """Loss and gradient-norm curves within `PARITY_RTOL`, step by step."""
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(
            torch.tensor(curve(run, key)),
            torch.tensor(curve(reference, key)),
            rtol=PARITY_RTOL,
            atol=0,
            msg=lambda m, key=key: f"{key}: {m}",
        )


def test_full_backends_agree(zero2_run, zero3_run, ddp_run):
    """Full fine-tuning: ZeRO-2 and ZeRO-3 follow DDP's loss and gradient-norm curves."""
    assert_same_curves(zero2_run, ddp_run)
    assert_same_curves(zero3_run, ddp_run)


def test_fixed_data_shards_train_the_same_steps_on_fewer_workers(one_worker_run, ddp_run):
    """What lets full fine-tuning and LoRA differ in GPUs yet see the same data: one worker on
    the two workers' shards, the same global batch, follows their loss and gradient norm, and
    sees the same tokens at every step."""
    assert one_worker_run.state["world_size"] == 1
    assert curve(one_worker_run, "tokens") == curve(ddp_run, "tokens")
    assert not (one_worker_run.metrics_path.parent / "curve").exists()  # nothing scored
    assert curve(one_worker_run, "label_tokens") == curve(ddp_run, "label_tokens")
    assert_curves_close(one_worker_run, ddp_run)


def test_lora_backends_agree(lora_run, lora_zero3_run, lora_ddp_run):
    """LoRA: ZeRO-2 and ZeRO-3 (the latter resumed at step 3) follow DDP's curves."""
    assert_same_curves(lora_run, lora_ddp_run)
    assert_same_curves(lora_zero3_run[1], lora_ddp_run)


# ---------------------------------------------------------------------------- lora
def test_lora_trains_only_the_adapters(lora_run):
    from transformers import AutoConfig

    from med42ray import storage
    from med42ray.train.strategies import lora_parameter_count

    curve = losses(lora_run)
    assert curve[-1] < curve[0] - 0.2
    base_cfg = AutoConfig.from_pretrained(storage.local_copy(lora_run.model_dir))
    lora_cfg = config(**{"train.strategy": "lora"}).train.lora
    assert lora_run.trainable_params == lora_parameter_count(base_cfg, lora_cfg)
    assert lora_run.total_params > 10 * lora_run.trainable_params


def test_lora_is_merged_in_a_ray_task_that_publishes_the_model(lora_run, bucket):
    from med42ray import storage
    from med42ray.models import CHECKSUMS_FILE

    run, out = lora_run, lora_run.metrics_path.parent
    assert run.adapter_dir == f"{bucket}/lora/adapter" and run.model_dir == f"{bucket}/lora/model"
    adapter, model = storage.list_files(run.adapter_dir), storage.list_files(run.model_dir)
    assert CHECKSUMS_FILE in adapter and CHECKSUMS_FILE in model
    check = json.loads((out / "merge_check.json").read_text())
    assert check == run.merge_check and check["ok"] and check["max_abs_logit_diff"] < 1e-3
    merge = json.loads((out / "train_result.json").read_text())["transfers"]["merge"]
    # the task's node fetched the adapter (not a checkpoint) and sent the merged model
    assert merge["downloaded_bytes"] == sum(adapter.values())
    assert merge["uploaded_bytes"] == sum(model.values())


def test_lora_adapter_and_merged_model_load_and_agree(lora_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from med42ray import storage

    adapter_dir = storage.local_copy(lora_run.adapter_dir)
    adapter = AutoPeftModelForCausalLM.from_pretrained(adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(storage.local_copy(lora_run.model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    ids = tokenizer("Which nerve is compressed in carpal tunnel syndrome?", return_tensors="pt")
    with torch.no_grad():
        a, m = adapter(**ids).logits, merged(**ids).logits
        base = adapter.get_base_model()
        with adapter.disable_adapter():
            b = base(**ids).logits
    torch.testing.assert_close(a, m, atol=1e-4, rtol=1e-4)
    assert (a - b).abs().max() > 1e-3  # the adapter changed the model
    assert generate(merged, tokenizer) == generate(adapter, tokenizer)


# ------------------------------------------------------------------- lora, zero-3
@pytest.fixture(scope="module")
def lora_zero3_run(train, tmp_path_factory):
    """LoRA under ZeRO-3 with merge_on_export: 3 steps, then a second run over the same folder
    to 6 steps that resumes from the step-3 checkpoint (the 70B LoRA recipe, in small)."""
    out = tmp_path_factory.mktemp("lora_zero3")
    settings = {
        **LORA,
        # the whole section, not `train.deepspeed.zero_stage`: that dotted key would write
        # into conftest's shared SMALL dict (load_config does not copy it) for later tests
        "train.deepspeed": {"enabled": True, "zero_stage": 3},
        "train.lora.merge_on_export": True,
        # every checkpoint (here: each run's last) scored off the workers: the LoRA curve
        "train.curve": {"eval_every_checkpoint": 1, "benchmarks": ["medqa", "pubmedqa"]},
    }
    first = train("lora_zero3", config(**settings, **{"train.max_steps": 3}), out=out)
    second = train("lora_zero3", config(**settings), out=out)
    return first, second


def test_lora_zero3_adapter_is_complete_and_trained(lora_zero3_run, tiny_model_path):
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from med42ray.train.strategies import LoraStrategy

    _, run = lora_zero3_run
    saved = load_file(run.adapter_dir / "adapter_model.safetensors")
    cfg = config(**{"train.strategy": "lora"})
    fresh = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraStrategy(cfg, str(tiny_model_path)).peft_config(),
    )
    expected = {k: v.shape for k, v in get_peft_model_state_dict(fresh).items()}
    assert expected and {k: v.shape for k, v in saved.items()} == expected
    b_mats = [v for k, v in saved.items() if "lora_B" in k]
    assert len(b_mats) == len(saved) // 2
    assert all(v.abs().max() > 0 for v in b_mats)  # B starts at zero: every one trained


def test_lora_zero3_adapter_loads_and_changes_the_model(lora_zero3_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    _, run = lora_zero3_run
    adapter = AutoPeftModelForCausalLM.from_pretrained(run.adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.adapter_dir)
    ids = tokenizer("Which nerve is compressed in carpal tunnel syndrome?", return_tensors="pt")
    with torch.no_grad():
        a = adapter(**ids).logits
        with adapter.disable_adapter():
            b = adapter(**ids).logits
    assert (a - b).abs().max() > 1e-3


def test_lora_zero3_resumes_from_its_checkpoint(lora_zero3_run):
    first, second = lora_zero3_run
    assert first.state["resumed_from"] is None and first.state["step"] == 3
    assert second.state["resumed_from"] == 3 and second.state["step"] == STEPS
    assert second.run_dir == first.run_dir
    # a local checkpoint is read in place (nothing fetched), each rank its own ZeRO-3 files
    assert second.state["resume_fetched_bytes"] == [0, 0]
    assert [
        sorted(f for f in files if "zero_pp_rank" in f) for files in second.state["resume_files"]
    ] == [
        [f"deepspeed/zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for kind in ("model", "optim")]
        for r in (0, 1)
    ]
    curve = losses(second)
    assert len(curve) == STEPS and curve[-1] < curve[0] - 0.2


def test_lora_zero3_merged_after_training_matches_the_adapter(lora_zero3_run):
    from transformers import AutoModelForCausalLM

    _, run = lora_zero3_run
    check = run.merge_check
    assert check["ok"] and check["dtype"] == "float32" and check["prompts"] == 3
    assert check["max_abs_logit_diff"] < 1e-3
    out = run.model_dir.parent
    assert json.loads((out / "merge_check.json").read_text()) == check
    assert json.loads((out / "train_result.json").read_text())["merge_check"] == check
    assert (run.model_dir / "model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(run.model_dir)


def test_merge_refuses_a_live_zero3_context():
    from transformers.integrations import HfDeepSpeedConfig

    from med42ray.train.merge import _assert_no_zero3

    _assert_no_zero3()
    ds = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_batch_size": 1})
    try:
        with pytest.raises(RuntimeError, match="ZeRO-3"):
            _assert_no_zero3()
    finally:
        del ds
    _assert_no_zero3()


# ------------------------------------------------------------------ object storage
@pytest.fixture(scope="module")
def s3_run(ray_session, tiny_model_path, bucket, tmp_path_factory):
    """ZeRO-2 on object storage only: the data a bucket folder of two shards, a checkpoint
    every step to S3 (the last 3 kept), the export to S3; rank 1 dies once at step 3, before
    its checkpoint, so Ray Train restarts the workers and they resume from step 2 in S3."""
    from med42ray import storage
    from med42ray.checkpoint_eval import curve_validation
    from med42ray.config import with_overrides
    from med42ray.train import run_training
    from med42ray.train.trainer import FAIL_ENV

    lines = FIXTURE.read_text().splitlines(keepends=True)
    data = f"{bucket}/data/train"
    storage.write_text(f"{data}/part-0.jsonl", "".join(lines[:32]))
    storage.write_text(f"{data}/part-1.jsonl", "".join(lines[32:]))
    out = tmp_path_factory.mktemp("s3")
    cfg = config(
        **{
            "train.max_steps": 4,
            "train.checkpoint_every": 1,
            "train.keep_checkpoints": 3,  # 4 written; the resumed one (2) among the 3 kept
            "train.max_failures": 1,
            "resources.storage_path": f"{bucket}/ckpt",
        }
    )
    # every second checkpoint scored off the workers, from its own export in the bucket
    cfg = with_overrides(
        cfg, {"train.curve": {"eval_every_checkpoint": 2, "benchmarks": ["medqa"]}}
    )
    os.environ[FAIL_ENV] = f"3:1:{out / 'killed-once'}"
    try:
        export = f"{bucket}/export"
        result = run_training(
            cfg, data, out, export_to=export, validation=curve_validation(cfg, export)
        )
    finally:
        os.environ.pop(FAIL_ENV)
    return result, out


def test_s3_run_exports_to_the_bucket_and_the_driver_fetches_small_files(s3_run, bucket):
    from med42ray import storage
    from med42ray.models import CHECKSUMS_FILE
    from med42ray.stages import PROGRESS_FILE

    result, out = s3_run
    assert result.model_dir == f"{bucket}/export/model" and result.adapter_dir is None
    files = storage.list_files(result.model_dir)
    assert {"model.safetensors", "config.json", CHECKSUMS_FILE} <= set(files)
    local = storage.local_copy(result.model_dir)
    sums = json.loads((local / CHECKSUMS_FILE).read_text())
    assert sums == {
        rel: hashlib.sha256((local / rel).read_bytes()).hexdigest()
        for rel in files
        if rel != CHECKSUMS_FILE
    }
    assert result.checkpoint_path.startswith(f"{bucket}/ckpt/")
    final = storage.list_files(result.checkpoint_path)
    assert not any(rel.startswith("export/") or ".safetensors" in rel for rel in final)
    recorded = json.loads((out / "train_result.json").read_text())["transfers"]
    small = final["trainer_state.json"] + final["metrics.jsonl"]
    points = storage.list_files(f"{bucket}/export/curve")  # the benchmark curve's, two
    small += sum(size for rel, size in points.items() if rel.endswith(".json"))
    polled = recorded["driver"]["downloaded_bytes"] - small  # the console's progress.json reads
    assert small < 64 * 1024
    assert storage.list_files(f"{bucket}/export")[PROGRESS_FILE] <= polled < 16 * 1024
    assert sum(final.values()) > 20 * small  # what `as_directory()` used to fetch
    assert recorded["export_uploaded_bytes"] == sum(files.values())
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def assert_fetched_own_files(state: dict, engine_files) -> None:
    """Each rank fetched on resume exactly the trainer state, the metrics, `latest`, its own
    RNG state and `engine_files(rank)`, and as many bytes as those files hold: less than the
    whole checkpoint."""
    from med42ray import storage

    resumed = storage.list_files(state["resumed_checkpoint"])
    for rank, files in enumerate(state["resume_files"]):
        common = {"trainer_state.json", "metrics.jsonl", "latest", f"rng_rank{rank:05d}.pt"}
        assert set(files) == common | engine_files(rank)
        fetched = state["resume_fetched_bytes"][rank]
        assert fetched == sum(resumed[f] for f in files) < state["checkpoint_bytes"]


def test_s3_resume_fetches_only_each_ranks_own_files(s3_run, zero2_run):
    from med42ray import storage

    result, out = s3_run
    state = result.state
    assert (out / "killed-once").read_text().startswith("killed rank 1 at step 3")
    assert state["resumed_from"] == 2
    resumed = storage.list_files(state["resumed_checkpoint"])
    assert state["checkpoint_bytes"] == sum(resumed.values())
    assert_fetched_own_files(
        state,
        lambda rank: {
            "deepspeed/mp_rank_00_model_states.pt",  # ZeRO-2: every rank reads the module
            f"deepspeed/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
        },
    )
    recorded = json.loads((out / "train_result.json").read_text())["transfers"]
    assert recorded["resume_fetched_bytes"] == state["resume_fetched_bytes"]
    kept = {rel.split("/")[0] for rel in storage.list_files(result.run_dir) if "/" in rel}
    assert len({k for k in kept if k.startswith("checkpoint_")}) == 3  # keep_checkpoints
    # resumed from its own shards only, the run follows the uninterrupted one
    torch.testing.assert_close(
        torch.tensor(losses(result)), torch.tensor(losses(zero2_run)[:4]), atol=1e-4, rtol=0
    )


# ----------------------------------------------------------------- benchmark curves
def test_lora_curve_points_survive_the_resumed_run(lora_zero3_run):
    """Each run's last checkpoint scored off the workers: the step-3 point of the first run
    is still there after the second continued to step 6; the tokens are those trained on."""
    _, second = lora_zero3_run
    out = second.metrics_path.parent
    curve = pd.read_csv(out / "curve.csv")
    assert list(curve["step"]) == [3, 3, STEPS, STEPS]
    assert list(curve["benchmark"]) == ["medqa", "pubmedqa"] * 2
    assert list(curve["n"]) == [17, 13] * 2 and set(curve["protocol"]) == {"letter"}
    rows = metric_rows(second)
    tokens = [sum(r["tokens"] for r in rows[:step]) for step in (3, STEPS)]
    assert list(curve["tokens"].iloc[::2]) == tokens
    assert curve["acc"].between(0, 1).all()


def test_s3_curve_scores_a_checkpoint_from_its_own_export_in_the_bucket(s3_run):
    from med42ray import storage
    from med42ray.train.checkpoint import read_state

    result, out = s3_run
    curve = pd.read_csv(out / "curve.csv")
    assert list(curve["step"]) == [2, 4] and list(curve["n"]) == [17, 17]
    checkpoints = sorted(
        {rel.split("/")[0] for rel in storage.list_files(result.run_dir) if "checkpoint_" in rel}
        - {"checkpoint_manager_snapshot.json"}
    )
    at_two = [c for c in checkpoints if read_state(f"{result.run_dir}/{c}")["step"] == 2]
    (two,) = at_two
    assert read_state(f"{result.run_dir}/{two}")["curve_export"] == {"model": "model"}
    assert "curve_export/model/model.safetensors" in storage.list_files(f"{result.run_dir}/{two}")
    points = storage.list_files(f"{result.model_dir.rsplit('/', 1)[0]}/curve")
    assert {"step-000002.json", "step-000004.json"} <= set(points)


def metric_rows(result) -> list[dict]:
    return [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
