"""Two fresh runs of the same config give the same report: every computed number, to the byte.

A reduced config (a few steps of LoRA fine-tuning against the base, one worker, one protocol, a few
items per benchmark) run twice from nothing, in two run folders: `numbers.csv` and the
tables derived from it must not differ at all. The measured times and throughputs are not in
them (`training.csv`, `cost_per_point.csv`), so nothing may vary."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import small_config

REDUCED = {
    "run.strategies": ["lora"],  # paired against the base: every section of the report
    "run.evaluate_base": True,
    "train.max_steps": 2,
    "train.checkpoint_every": None,  # the last step only
    "train.deepspeed.enabled": False,
    "train.max_seq_len": 128,
    "resources.num_workers": 1,
    "data.near_dedup.enabled": False,
    "eval.limit": 6,
    "eval.batch_size": 8,
}
SAME = ["numbers.csv", "accuracy.csv", "paired.csv", "seeds.csv", "data.csv"]


def test_two_fresh_runs_give_byte_identical_numbers(tmp_path: Path, ray_session, tiny_model_path):
    from med42ray.experiment import run_experiment

    cfg = small_config(overrides=REDUCED)
    reports = [run_experiment(cfg, tmp_path / name) for name in ("first", "second")]
    first, second = reports
    assert (first / "numbers.csv").stat().st_size > 1000
    for name in SAME:
        if (first / name).exists() or (second / name).exists():
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    same_keys = {p.name.rsplit("-", 1)[1] for p in (tmp_path / "first").glob("*-*")}
    assert same_keys == {p.name.rsplit("-", 1)[1] for p in (tmp_path / "second").glob("*-*")}
