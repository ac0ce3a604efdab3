"""The training benchmarks' bookkeeping (perf/train_bench.py, perf/gpu_train.py): the
loss-curve check, the ratios, the token and attention counts of a TRL padding-free batch, the
GPU script's shapes, and a few paired model steps on the small test model. The benchmarks
themselves are run by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[1] / "perf"
sys.path.insert(0, str(PERF))

import gpu_train  # noqa: E402
import train_bench  # noqa: E402


def test_loss_agreement_skips_the_warmup_window_and_applies_the_tolerance():
    ours = [4.0] * 10 + [2.0] * 10 + [1.0] * 10
    close = [5.0] * 10 + [2.2] * 10 + [1.1] * 10  # first window off by 25%: not checked
    far = [4.0] * 10 + [2.0] * 10 + [1.5] * 10
    ok = train_bench.loss_agreement(ours, close, rtol=0.15)
    assert ok["ours"] == [4.0, 2.0, 1.0] and ok["baseline"] == [5.0, 2.2, 1.1]
    assert ok["within_tolerance"] and ok["max_rel_diff"] == pytest.approx(0.1)
    assert not train_bench.loss_agreement(ours, far, rtol=0.15)["within_tolerance"]
    assert not train_bench.loss_agreement(ours[:5], close[:5])["within_tolerance"]  # no window


def test_batch_order_effect_compares_the_grouped_trainer_with_its_random_batches():
    random_run = {"losses": [4.0] * 10 + [2.0] * 10}
    grouped = {"losses": [4.0] * 10 + [2.5] * 10}
    results = {
        "full": {"hf_random": random_run, "hf_grouped": grouped, "ours": random_run},
        "lora": {"hf_grouped": grouped, "ours": random_run},  # no random run: no yardstick
    }
    effect = train_bench.batch_order_effect(results)
    assert list(effect) == ["full"]
    assert effect["full"]["max_rel_diff"] == pytest.approx(0.25)
    assert effect["full"]["baseline"] == [4.0, 2.5]


def test_ratios_per_strategy_and_the_worse_one_unprefixed():
    def run(tok_s: float, per_cpu: float) -> dict:
        return {"real_tokens_per_s": tok_s, "real_tokens_per_cpu_s": per_cpu}

    results = {
        "full": {"ours": run(300, 100), "trl_packed": run(200, 100)},
        "lora": {"ours": run(300, 100), "trl_packed": run(250, 50)},
    }
    r = train_bench.ratios(results)
    assert r["full_ours_vs_trl_packed"] == pytest.approx(1.5)
    assert r["lora_ours_vs_trl_packed"] == pytest.approx(1.2)
    assert r["ours_vs_trl_packed"] == pytest.approx(1.2)
    assert r["ours_vs_trl_packed_per_cpu_s"] == pytest.approx(1.0)


def test_median_run_takes_the_median_repeat_and_both_medians():
    runs = [
        {"real_tokens_per_s": 90.0, "real_tokens_per_cpu_s": 50.0, "losses": [3.0]},
        {"real_tokens_per_s": 120.0, "real_tokens_per_cpu_s": 40.0, "losses": [1.0]},
        {"real_tokens_per_s": 100.0, "real_tokens_per_cpu_s": 60.0, "losses": [2.0]},
    ]
    out = train_bench.median_run(runs)
    assert out["real_tokens_per_s"] == 100.0 and out["losses"] == [2.0]  # the middle run's
    assert out["real_tokens_per_cpu_s"] == 50.0  # the median of its own, not the run's 60
    assert out["real_tokens_per_s_repeats"] == [90.0, 120.0, 100.0]
    assert train_bench.median_run(runs[:1])["real_tokens_per_s"] == 90.0


def test_step_log_counts_a_padding_free_batch_per_sample():
    import torch

    log = train_bench.StepLog()
    batch = {
        "input_ids": torch.ones(1, 9, dtype=torch.long),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]),
    }
    assert log.counting(lambda _: batch, padding_free=True)([]) is batch
    padded = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
    }
    log.counting(lambda _: padded)([])
    assert log.counts == [(9, 9, 9 + 4 + 16), (7, 8, 9 + 16)]


def test_mixed_length_chats_are_deterministic_and_end_on_an_answer():
    a = train_bench.mixed_length_chats(50, seed=3)
    assert a == train_bench.mixed_length_chats(50, seed=3)
    assert all(c["messages"][-1]["role"] == "assistant" for c in a)
    turns = [sum(m["role"] == "user" for m in c["messages"]) for c in a]
    assert min(turns) == 1 and max(turns) <= train_bench.MAX_TURNS


def test_gpu_script_shapes():
    opts = gpu_train.parse_args(["--tiny", "--steps", "3"])
    shape = gpu_train.resolve(opts)
    assert (shape.steps, shape.seq, opts.gpu) == (3, 512, False)
    full = gpu_train.Shape()
    per_layer = (
        2 * full.hidden**2
        + 2 * full.hidden * full.hidden // full.heads * full.kv_heads
        + 3 * full.hidden * full.intermediate
    )
    params = full.layers * per_layer + 2 * full.vocab * full.hidden
    assert 1.0e9 < params < 1.3e9  # a 1B-class Llama


def test_step_log_summary_counts_model_flops_and_no_mfu_without_a_peak():
    from types import SimpleNamespace

    from med42ray.train.metrics import ModelFlops

    log = train_bench.StepLog()
    log.times, log.cpu = [1.0, 2.0, 2.0], [2.0, 4.0, 4.0]
    log.counts = [(100, 120, 5000), (100, 100, 5000), (200, 200, 10000)]
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=[{"loss": 2.0}, {"loss": 1.0}]))
    flops = ModelFlops(matmul_params=1000, trainable_params=1000, layers=2, attention_width=8)
    out = train_bench.StepLog.summary(log, trainer, warmup=1, flops=flops)
    assert out["real_tokens_per_s"] == 75.0  # median of 50 and 100
    assert out["real_tokens_per_cpu_s"] == 37.5
    assert out["padding_share"] == pytest.approx(20 / 420)
    assert out["losses"] == [2.0, 1.0] and "mfu" not in out
    per_s = [(6000 * 100 + 96 * 5000) / 2, (6000 * 200 + 96 * 10000) / 2]
    assert out["model_tflops_per_s_per_device"] == pytest.approx(sum(per_s) / 2 / 1e12)
    with_peak = log.summary(trainer, warmup=1, flops=flops, peak=1e6)
    assert with_peak["mfu"] == pytest.approx(sum(per_s) / 2 / 1e6)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_paired_steps_train_both_copies_on_their_own_batches(strategy, tiny_model_path):
    """Ours takes packed rows (no padding), the HF step grouped padded samples; both count
    the non-padding tokens they trained on."""
    from med42ray.models import load_tokenizer
    from med42ray.train.tokenize import tokenize_chat

    from .conftest import small_config

    cfg = small_config(overrides={"train.strategy": strategy, "train.max_seq_len": 512})
    tokenizer = load_tokenizer(cfg.model, str(tiny_model_path))
    chats = train_bench.mixed_length_chats(60)
    samples = [tokenize_chat(tokenizer, c["messages"], 512) for c in chats]
    out = train_bench.paired_steps(cfg, str(tiny_model_path), samples, 4, train_bench.WARMUP + 2)
    rates = out["real_tokens_per_s"]
    assert set(rates) == {"ours", "hf_grouped"} and min(rates.values()) > 0
    assert out["ratio"] == pytest.approx(rates["ours"] / rates["hf_grouped"])


def test_step_log_adds_each_batch_collation_to_its_step():
    """The trainers collate before `on_step_begin`; the step's time includes it, as ours does."""
    import torch

    log = train_bench.StepLog()
    collate = log.counting(lambda features: {"input_ids": features, "attention_mask": features})
    for _ in range(2):
        collate(torch.ones(2, 3, dtype=torch.long))
    assert len(log.collation) == 2 and all(wall >= 0 for wall, _ in log.collation)
    assert log.counts == [(6, 6, 18)] * 2
    log.times, log.cpu = [1.0, 2.0], [1.5, 2.5]
    log.collation = [(0.25, 0.5), (0.5, 0.25)]
    assert log.step_seconds() == ([1.25, 2.5], [2.0, 2.75])
    log.collation = []  # none recorded (a custom loop): the steps as timed
    assert log.step_seconds() == ([1.0, 2.0], [1.5, 2.5])
