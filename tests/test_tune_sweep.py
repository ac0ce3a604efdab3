"""The tiny sweep on the shared Ray: ASHA over three trials, one of which fails, interrupted
after the first trial and resumed. One interrupted `run_sweep` + one resumed one, three
trial launches (each a real 1-worker Ray Train run of 4 steps through `build_trainer`).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from ray import tune

from tests.conftest import REPO, SMALL

FIXTURE = REPO / "tests" / "fixtures" / "train" / "chat.jsonl"
ATTN = ["eager", "no_such_attention", "sdpa"]  # the middle one fails inside the worker


class InterruptAfterFirstTrial(tune.Callback):
    """Ctrl+C (SIGINT to this process) once the first trial has finished: the sweep stops
    the way an interrupted `med42ray sweep` does. A flag file keeps it from firing again when
    the restored sweep unpickles it."""

    def __init__(self, flag: Path):
        self.flag = flag

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.flag.exists():
            return
        self.flag.write_text(trial.trial_id)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            raise RuntimeError("Tune's SIGINT handler is not installed")
        os.kill(os.getpid(), signal.SIGINT)


def sweep_config():
    from med42ray.tune.space import apply_trial, load_sweep

    return apply_trial(
        load_sweep(REPO / "sweeps" / "tiny.yaml"),
        {
            **SMALL,  # the pinned test model and run, whatever configs/tiny.yaml's demo size
            "train.max_steps": 4,
            "train.max_seq_len": 128,
            "train.micro_batch_size": 2,
            "train.deepspeed.enabled": False,
            "train.checkpoint_every": None,
            "resources.num_workers": 1,
            "tune.scheduler": "asha",
            "tune.grace_period": 2,
            "tune.max_concurrent_trials": 1,
            "tune.search_space": {"model.attn_implementation": {"grid": ATTN}},
        },
    )


def starts(folder: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for marker in folder.iterdir():
        trial_id = marker.name.split(".")[0]
        counts[trial_id] = counts.get(trial_id, 0) + 1
    return counts


@pytest.fixture(scope="module")
def sweep(ray_session, tiny_model_path, tmp_path_factory):
    from med42ray.tune.sweep import STARTS_ENV, run_sweep

    out = tmp_path_factory.mktemp("sweep")
    markers = out / "starts"
    markers.mkdir()
    cfg = sweep_config()
    os.environ[STARTS_ENV] = str(markers)
    try:
        flag = out / "interrupted"
        first = run_sweep(cfg, out, str(FIXTURE), callbacks=[InterruptAfterFirstTrial(flag)])
        first_starts = starts(markers)
        final = run_sweep(cfg, out, str(FIXTURE), resume=True)
    finally:
        os.environ.pop(STARTS_ENV)
    return cfg, out, first, first_starts, final, starts(markers), flag.read_text()


def by_attn(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {row["model.attn_implementation"]: row for _, row in table.iterrows()}


def test_interrupted_sweep_stops_after_the_first_trial(sweep):
    _, _, first, first_starts, _, _, finished_id = sweep
    rows = by_attn(first)
    assert rows["eager"]["status"] == "TERMINATED" and rows["eager"]["trial_id"] == finished_id
    assert first_starts == {finished_id: 1}  # nothing else started before the interrupt


def test_resume_finishes_the_rest_without_rerunning_finished_trials(sweep):
    _, _, first, _, final, final_starts, finished_id = sweep
    rows = by_attn(final)
    assert set(rows) == set(ATTN) and len(final) == 3
    assert final_starts[finished_id] == 1  # the finished trial was not run again
    assert set(final_starts) == set(final["trial_id"])
    assert all(n == 1 for n in final_starts.values()), final_starts
    before = by_attn(first)["eager"]
    assert rows["eager"]["loss"] == before["loss"] and rows["eager"]["checkpoint"]


def test_failed_trial_is_listed_with_its_error_and_the_others_finish(sweep):
    _, out, _, _, final, _, _ = sweep
    rows = by_attn(final)
    failed = rows["no_such_attention"]
    assert failed["status"] == "ERROR"
    assert "no_such_attention" in failed["error"] and "ValueError" in failed["error"]
    for attn in ("eager", "sdpa"):
        assert rows[attn]["status"] == "TERMINATED" and rows[attn]["error"] == ""
        assert rows[attn]["step"] == 4 and rows[attn]["loss"] > 0
    table = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert table.loc[table["status"] == "ERROR", "error"].str.contains("ValueError").all()
    md = (out / "trials.md").read_text()
    assert "| ERROR |" in md and md.count("| TERMINATED |") == 2


def test_trials_table_and_best_model(sweep):
    from transformers import AutoModelForCausalLM

    cfg, out, _, _, final, _, _ = sweep
    table = pd.read_csv(out / "trials.csv")
    expected = {"trial_id", "model.attn_implementation", "loss", "status", "error", "checkpoint"}
    assert expected <= set(table.columns)
    assert len(table) == 3
    done = final[final["status"] == "TERMINATED"]
    best = done.loc[done["loss"].idxmin()]
    record = json.loads((out / "best" / "best.json").read_text())
    assert record["trial_id"] == best["trial_id"] and record["metric"] == "loss"
    assert record["value"] == pytest.approx(best["loss"])
    model = AutoModelForCausalLM.from_pretrained(out / "best" / "model")
    assert model.config.num_hidden_layers == cfg.model.tiny.num_hidden_layers
    metrics = (out / "best" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3, 4]
    # each trial's Train run has its own storage under the sweep's
    trial_runs = out / "ray_results" / f"{cfg.name}-sweep-trials"
    assert {p.name for p in trial_runs.iterdir()} >= set(done["trial_id"])


def test_fresh_sweep_refuses_an_existing_one_and_resume_needs_one(sweep, tmp_path):
    from med42ray.tune.sweep import run_sweep

    cfg, out, *_ = sweep
    with pytest.raises(FileExistsError, match="--resume"):
        run_sweep(cfg, out, str(FIXTURE))
    with pytest.raises(FileNotFoundError, match="no sweep to resume"):
        run_sweep(cfg, tmp_path, str(FIXTURE), resume=True)


def test_optuna_missing_is_a_clear_error(ray_session, tmp_path):
    from med42ray.config import ConfigError
    from med42ray.tune.space import apply_trial
    from med42ray.tune.sweep import run_sweep

    try:
        import optuna  # noqa: F401

        pytest.skip("optuna is installed")
    except ImportError:
        pass
    cfg = apply_trial(sweep_config(), {"tune.search_alg": "optuna"})
    with pytest.raises(ConfigError, match="optuna"):
        run_sweep(cfg, tmp_path, str(FIXTURE))


def test_trials_are_logged_to_mlflow(sweep):
    from mlflow.tracking import MlflowClient

    _, out, _, _, final, _, _ = sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) >= (final["status"] == "TERMINATED").sum()
    assert all("loss" in r.data.metrics for r in finished)


def test_a_run_takes_each_strategys_values_from_its_finished_sweep(sweep, tmp_path):
    from med42ray.config import strategy_config, with_overrides
    from med42ray.experiment import apply_sweeps

    cfg, out, *_ = sweep
    record = json.loads((out / "best" / "best.json").read_text())
    assert record["strategy"] == "full" and set(record["config"]) == {"model.attn_implementation"}
    run = with_overrides(cfg, {"run.from_sweep": {"full": str(out)}})
    applied = strategy_config(apply_sweeps(run), "full")
    assert applied.model.attn_implementation == record["config"]["model.attn_implementation"]
    assert strategy_config(apply_sweeps(run), "lora").model.attn_implementation is None
    wrong = with_overrides(cfg, {"run.from_sweep": {"lora": str(out)}})
    with pytest.raises(ValueError, match=r"run\.from_sweep\.lora: .*a sweep of full, not lora"):
        apply_sweeps(wrong)
    missing = with_overrides(cfg, {"run.from_sweep": {"full": str(tmp_path)}})
    with pytest.raises(FileNotFoundError, match=r"best\.json: no such file"):
        apply_sweeps(missing)


def test_the_recipe_sweeps_search_loras_learning_rate_around_ten_times_fulls():
    """The field's evidence: LoRA wants roughly 10x full fine-tuning's learning rate; the
    paper recipes' sweeps are centred accordingly (geometric centres of the searched ranges)."""
    import math

    from med42ray.tune.space import load_sweep

    def centre(name: str) -> float:
        low, high = load_sweep(REPO / "sweeps" / name).tune.search_space["train.optimizer.lr"][
            "loguniform"
        ]
        return math.sqrt(low * high)

    ratio = centre("med42-lora-rank-lr.yaml") / centre("med42-fp-lr.yaml")
    assert ratio == pytest.approx(10, rel=0.01)
