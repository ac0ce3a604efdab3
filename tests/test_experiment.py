"""The whole experiment, for real: `med42ray run` submitted as a Ray job, stopped midway, resumed.

One small experiment (tiny model, a few optimiser steps per strategy, every benchmark) is
submitted with the Job Submission SDK to a real local Ray head. The job is stopped once the
base model's evaluation has written its first parts, then submitted again: data and training
must come from the cache, evaluation must continue from its parts, and the run must end with a
report whose numbers are exactly those of the stage outputs.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pandas as pd
import pytest

from med42ray.report.tables import PAPER_ROWS
from tests.conftest import CONFIGS, small_set_args
from tests.test_jobs import OFFLINE_ENV, VENV_BIN, local_head

RUN_SETTINGS = [  # on top of the tests' pinned small model: a few steps per strategy
    "train.max_steps=3",
    # one worker, no DeepSpeed: tests/test_train_runs.py covers 2 workers under ZeRO; ~25 s less
    "resources.num_workers=1",
    "train.deepspeed.enabled=false",
    "train.max_seq_len=128",
    "train.checkpoint_every=2",
    "eval.batch_size=8",
    # three protocols side by side (the report's column groups and agreement), generation short
    "eval.protocols=[{}, {prompt_format: cloze}, {scoring: generate}]",
    "eval.max_new_tokens=4",
    "data.near_dedup.enabled=false",  # tests/test_data_pipeline.py covers it; 14 s less here
]
PLANTED_CONTAMINATIONS = 6  # scripts/make_tiny_data.py plants this many benchmark copies
PROTOCOLS = ["letter", "cloze", "generate"]


def run_args() -> list[str]:
    return [*small_set_args(), *(a for s in RUN_SETTINGS for a in ("--set", s))]


JOB_END = {"SUCCEEDED", "FAILED", "STOPPED"}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
    return value


def stage_records(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/stage.json")}


def eval_parts(run_dir: Path) -> list[Path]:
    return list(run_dir.glob("eval-base-*/parts/*/*.parquet"))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_model_path, _isolated_cache):
    """Submit, stop during evaluation, resubmit; return the run folder and what happened."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    run_dir = tmp_path_factory.mktemp("experiment") / "run"
    command = [str(VENV_BIN / "med42ray"), "run", str(CONFIGS / "tiny.yaml"), "--out"]
    entrypoint = shlex.join([*command, str(run_dir), *run_args()])
    env = {"env_vars": {**OFFLINE_ENV, "MED42RAY_CACHE": str(_isolated_cache)}}
    with local_head(num_cpus=2) as head:
        client = JobSubmissionClient(head.dashboard)

        def finish(job: str, timeout: float) -> str:
            status = wait_for(
                lambda: (
                    (s := client.get_job_status(job)) in JobStatus.__members__.values()
                    and s.value in JOB_END
                    and s
                ),
                timeout,
                f"job {job}",
                interval=0.5,
            )
            return status.value

        first = client.submit_job(entrypoint=entrypoint, runtime_env=env)
        wait_for(
            lambda: eval_parts(run_dir) or client.get_job_status(first).value in JOB_END,
            600,
            "the base model's first evaluation parts",
            interval=0.2,
        )
        assert eval_parts(run_dir), client.get_job_logs(first)[-3000:]
        client.stop_job(first)
        assert finish(first, 120) == "STOPPED"
        before = stage_records(run_dir)
        parts_at_stop = len(eval_parts(run_dir))

        second = client.submit_job(entrypoint=entrypoint, runtime_env=env)
        status = finish(second, 600)
        logs = client.get_job_logs(second)
        assert status == "SUCCEEDED", logs[-3000:]
    return {"run_dir": run_dir, "before": before, "parts_at_stop": parts_at_stop, "logs": logs}


def test_stopped_run_resumes_without_redoing_finished_stages(experiment):
    run_dir, before = experiment["run_dir"], experiment["before"]
    after = stage_records(run_dir)
    names = sorted(name.rsplit("-", 1)[0] for name in after)
    assert names == ["data", "eval-base", "eval-full", "eval-lora", "train-full", "train-lora"]
    finished_first = {k for k in before if not k.startswith("eval-base")}
    assert {k.rsplit("-", 1)[0] for k in finished_first} == {"data", "train-full", "train-lora"}
    for name in finished_first:  # same folder, same record: not run again
        assert after[name] == before[name]
    base = json.loads(next(run_dir.glob("eval-base-*/eval.json")).read_text())
    assert base["resumed"] > 0 and base["resumed"] + base["scored"] == base["requests"]
    assert "stage data: cached" in experiment["logs"]


def test_rerun_of_a_finished_run_reuses_every_stage(experiment):
    from med42ray.cli import parse_overrides
    from med42ray.config import load_config
    from med42ray.experiment import run_experiment

    run_dir = experiment["run_dir"]
    before = stage_records(run_dir)
    cfg = load_config(CONFIGS / "tiny.yaml", parse_overrides(run_args()[1::2]))
    start = time.monotonic()
    report = run_experiment(cfg, run_dir)
    assert time.monotonic() - start < 60  # no stage ran: no Ray, no training
    assert stage_records(run_dir) == before
    assert (report / "report.md").is_file()


def test_report_layout_and_figures(experiment):
    report = experiment["run_dir"] / "report"
    text = (report / "report.md").read_text()
    for section in (
        "## Accuracy",
        "## USMLE by step",
        "## Training cost",
        "## Data",
        "## Package versions",
        "## Configs",
    ):
        assert section in text
    table = text.split("## Accuracy")[1].split("\n\n")[2]
    header = table.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "benchmark",
        *(f"{p}: {m}" for p in PROTOCOLS for m in ("base", "full", "lora")),
        "n",
    ]  # a column group per protocol
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == [label for _, label in PAPER_ROWS]  # MMLU clinical both ways included
    assert "## Agreement between protocols" in text and "## Protocols" in text
    agreement = text.split("## Agreement between protocols")[1].split("\n\n")[2]
    header = [c.strip() for c in agreement.splitlines()[0].strip("|").split("|")]
    assert header == ["benchmark", "letter ~ cloze", "letter ~ generate", "cloze ~ generate", "n"]
    pooled = agreement.splitlines()[-1]
    assert "All benchmarks (items pooled)" in pooled and pooled.count(" / ") == 3 * 2
    for png in ("accuracy.png", "loss_curves.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "decontaminated" in text and "torch" in text


def test_report_numbers_reconcile_with_stage_outputs(experiment):
    run_dir = experiment["run_dir"]
    numbers = pd.read_csv(run_dir / "report" / "numbers.csv")
    acc = numbers[(numbers["section"] == "accuracy") & (numbers["metric"] == "acc")]
    acc = acc.set_index(["subject", "item"])["value"]
    for model in ("base", "full", "lora"):
        summary = pd.read_csv(next(run_dir.glob(f"eval-{model}-*/summary.csv")))
        assert list(dict.fromkeys(summary["protocol"])) == PROTOCOLS
        for protocol, part in summary.groupby("protocol"):
            column = f"{protocol}: {model}"
            tasks = part[part["level"] == "task"]
            assert len(tasks) == 12
            for _, row in tasks.iterrows():
                assert acc[(column, row["benchmark"])] == pytest.approx(row["acc"], abs=1e-12)
            assert acc[(column, "average")] == pytest.approx(tasks["acc"].mean())
            groups = part[part["level"] == "group"].set_index("benchmark")["acc"]
            for group in ("usmle", "mmlu_clinical", "mmlu_clinical_weighted"):
                assert acc[(column, group)] == pytest.approx(float(groups[group]))
            mmlu = tasks[tasks["benchmark"].str.startswith("mmlu_")]
            weighted = (mmlu["acc"] * mmlu["n"]).sum() / mmlu["n"].sum()
            assert groups["mmlu_clinical_weighted"] == pytest.approx(weighted)
            assert groups["mmlu_clinical"] == pytest.approx(mmlu["acc"].mean())
        agreement = pd.read_csv(next(run_dir.glob(f"eval-{model}-*/agreement.csv")))
        pooled = agreement[agreement["benchmark"] == "all"].set_index("protocol_b")
        subject = f"{model}: letter ~ cloze"
        assert numbers.set_index(["section", "subject", "item", "metric"])["value"][
            ("agreement", subject, "all", "agree")
        ] == pytest.approx(float(pooled.loc["cloze", "agree"]))
    training = numbers[numbers["section"] == "training"].set_index(["subject", "metric"])
    for strategy in ("full", "lora"):
        result = json.loads(next(run_dir.glob(f"train-{strategy}-*/train_result.json")).read_text())
        assert training.loc[(strategy, "trainable_params"), "value"] == result["trainable_params"]
        assert training.loc[(strategy, "steps"), "value"] == 3
    manifest = json.loads(next(run_dir.glob("data-*/manifest.json")).read_text())
    data = numbers[numbers["section"] == "data"].set_index(["subject", "metric"])["value"]
    for key in ("read", "kept", "deduplicated", "decontaminated"):
        assert data[("TOTAL", key)] == manifest["totals"][key]
    assert data[("TOTAL", "decontaminated")] == PLANTED_CONTAMINATIONS  # and nothing else
    assert (run_dir / next(run_dir.glob("data-*")).name / "decontamination.md").is_file()


def test_report_command_compares_runs(experiment, tmp_path):
    from typer.testing import CliRunner

    from med42ray.cli import app

    run_dir = experiment["run_dir"]
    result = CliRunner().invoke(app, ["report", str(run_dir), str(run_dir)])
    assert result.exit_code != 0 and "needs --out" in str(result.exception)
    out = tmp_path / "compare"
    result = CliRunner().invoke(app, ["report", str(run_dir), str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    header = (out / "report.md").read_text().split("## Accuracy")[1].split("\n\n")[2]
    assert "1:run/base" in header and "2:run/lora" in header
    with pytest.raises(FileNotFoundError, match=r"no run\.json"):
        from med42ray.report import build_report

        build_report([tmp_path], tmp_path / "r")


def test_report_names_where_each_benchmark_came_from(experiment):
    """Benchmark provenance: each evaluation records source, form, items and content hash, and
    the report lists them (one row per benchmark, the same for base, full and LoRA)."""
    from med42ray.benchmarks import load_benchmark_with_provenance

    report = experiment["run_dir"] / "report"
    table = pd.read_csv(report / "benchmarks.csv")
    assert "## Benchmarks scored" in (report / "report.md").read_text()
    groups = {"mmlu_clinical", "mmlu_clinical_weighted", "usmle", "usmle_weighted", "average"}
    assert set(table["benchmark"]) == {b for b, _ in PAPER_ROWS} - groups
    assert len(table) == table["benchmark"].nunique() == 12
    medqa = table.set_index("benchmark").loc["medqa"]
    expected = load_benchmark_with_provenance(
        "medqa", str(CONFIGS.parent / "data/tiny/benchmarks/medqa.jsonl")
    )
    assert medqa["sha256"] == expected.provenance.sha256[:16]
    assert (medqa["form"], int(medqa["items"])) == ("json_lines", expected.provenance.items)
