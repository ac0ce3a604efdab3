"""The whole experiment, for real: `med42ray run` submitted as a Ray job, stopped midway, resumed.

One small experiment (tiny model, a few optimiser steps per strategy and seed, two seeds,
every benchmark) is
submitted with the Job Submission SDK to a real local Ray head. The job is stopped once the
base model's evaluation has written its first parts, then submitted again: data and training
must come from the cache, evaluation must continue from its parts, and the run must end with a
report whose numbers are exactly those of the stage outputs.
"""

from __future__ import annotations

import json
import re
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
    # two protocols side by side (the report's column groups and agreement); generation is
    # tests/test_eval_pipeline.py's
    "eval.protocols=[{}, {prompt_format: cloze}]",
    "data.near_dedup.enabled=false",  # tests/test_data_pipeline.py covers it; 14 s less here
    "run.seeds=[0, 1]",  # each strategy trained and scored twice: the study's seeds
    # the last checkpoint of each training scored off the workers on two whole benchmarks
    "train.curve={eval_every_checkpoint: 2, benchmarks: [medqa, pubmedqa]}",
]
PLANTED_CONTAMINATIONS = 6  # scripts/make_tiny_data.py plants this many benchmark copies
PROTOCOLS = ["letter", "cloze"]
SEEDS = [0, 1]
TRAININGS = [f"{s}-seed{seed}" for s in ("full", "lora") for seed in SEEDS]


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
    assert names == sorted(
        ["data", "eval-base", *(f"{kind}-{t}" for kind in ("eval", "train") for t in TRAININGS)]
    )
    finished_first = {k for k in before if not k.startswith("eval-base")}
    assert {k.rsplit("-", 1)[0] for k in finished_first} == {
        "data",
        *(f"train-{t}" for t in TRAININGS),
    }
    for name in finished_first:  # same folder, same record: not run again
        assert after[name] == before[name]
    base = json.loads(next(run_dir.glob("eval-base-*/eval.json")).read_text())
    assert base["resumed"] > 0 and base["resumed"] + base["scored"] == base["requests"]
    assert re.search(r"^\[1/10\] data +cached ", experiment["logs"], re.MULTILINE)


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
        "## Headline",
        "## Accuracy",
        "## Seeds",
        "## Paired differences",
        "## Matched budgets",
        "## USMLE by step",
        "## Training cost",
        "## Benchmark accuracy during training",
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
    assert header == ["benchmark", "letter ~ cloze", "n"]
    pooled = agreement.splitlines()[-1]
    assert "All benchmarks (items pooled)" in pooled and pooled.count(" / ") == 2
    for png in ("accuracy.png", "loss_curves.png", "accuracy_curves.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == text.count("![")  # every figure
    assert "<table" in page and "Headline" in page
    assert "decontaminated" in text and "torch" in text


def test_report_numbers_reconcile_with_stage_outputs(experiment):
    run_dir = experiment["run_dir"]
    numbers = pd.read_csv(run_dir / "report" / "numbers.csv")
    acc = numbers[(numbers["section"] == "accuracy") & (numbers["metric"] == "acc")]
    acc = acc.set_index(["subject", "item"])["value"]
    by_key = numbers.set_index(["section", "subject", "item", "metric"])["value"]
    for model in ("base", "full", "lora"):
        pattern = f"eval-{model}-[0-9a-f]*" if model == "base" else f"eval-{model}-seed*"
        folders = sorted(run_dir.glob(pattern))
        assert len(folders) == (1 if model == "base" else len(SEEDS))
        summaries = [pd.read_csv(f / "summary.csv") for f in folders]
        summary = pd.concat(summaries).groupby(["protocol", "level", "benchmark"], sort=False)
        summary = summary[["acc", "n"]].mean().reset_index()  # over seeds, as the report
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
        agreement = pd.concat(pd.read_csv(f / "agreement.csv") for f in folders)
        pooled = agreement[agreement["benchmark"] == "all"].groupby("protocol_b")["agree"].mean()
        assert by_key[("agreement", f"{model}: letter ~ cloze", "all", "agree")] == pytest.approx(
            float(pooled["cloze"])
        )
    training = numbers[numbers["section"] == "training"].set_index(["subject", "metric"])
    for label in TRAININGS:
        result = json.loads(next(run_dir.glob(f"train-{label}-*/train_result.json")).read_text())
        assert training.loc[(label, "trainable_params"), "value"] == result["trainable_params"]
        assert training.loc[(label, "steps"), "value"] == 3
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


def test_seeds_paired_differences_and_the_generated_headline(experiment):
    report = experiment["run_dir"] / "report"
    seeds = pd.read_csv(report / "seeds.csv")
    assert set(seeds["model"]) == {"full", "lora"} and (seeds["seeds"] == len(SEEDS)).all()
    paired = pd.read_csv(report / "paired.csv")
    average = paired[(paired["benchmark"] == "average") & (paired["protocol"] == "letter")]
    average = average.set_index(["a", "b"])
    assert set(average.index) == {("full", "lora"), ("full", "base"), ("lora", "base")}
    assert (average["seeds"] == len(SEEDS)).all()
    base = pd.read_parquet(next(experiment["run_dir"].glob("eval-base-*/predictions.parquet")))
    assert (average["items"] == (base["protocol"] == "letter").sum()).all()
    text = (report / "report.md").read_text()
    headline = text.split("## Headline")[1].split("\n## ")[0]
    row = average.loc[("full", "lora")]
    assert f"Full fine-tuning vs LoRA **{100 * row['diff']:+.1f} points**" in headline
    assert f"CI {100 * row['low']:+.1f} to {100 * row['high']:+.1f}" in headline
    budgets = text.split("## Matched budgets")[1].split("\n\n")[1]
    assert budgets.startswith("Matched: all 4 trainings read the prepared data"), budgets
    assert set(pd.read_csv(report / "cost_per_point.csv")["strategy"]) <= {"full", "lora"}


def test_mlflow_holds_the_run_with_a_child_per_stage(experiment):
    from mlflow.tracking import MlflowClient

    run_dir = experiment["run_dir"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    stages = set(json.loads((run_dir / "run.json").read_text())["stages"])
    children: dict[str, list] = {}
    for r in runs:
        children.setdefault(r.data.tags.get("mlflow.parentRunId", ""), []).append(r)
    finished = [
        r
        for r in children.get("", [])
        if r.info.status == "FINISHED"
        and {c.info.run_name for c in children.get(r.info.run_id, [])} == stages
    ]
    assert finished, [(r.info.run_name, r.info.status) for r in runs]
    parent = finished[0]
    assert parent.data.params["run.seeds"] == "[0, 1]"
    kids = {c.info.run_name: c for c in children[parent.info.run_id]}
    history = client.get_metric_history(kids["train-full-seed0"].info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    scored = client.get_metric_history(kids["train-lora-seed1"].info.run_id, "curve_acc/medqa")
    assert [m.step for m in scored] == [3]  # the benchmark curve (the last checkpoint only)
    assert "acc/letter/medqa" in kids["eval-lora-seed1"].data.metrics
    artifacts = client.list_artifacts(parent.info.run_id, "report")
    assert "report/report.md" in {a.path for a in artifacts}


def test_the_last_checkpoint_curve_point_is_the_evaluation_score(experiment):
    """Scored off the workers during training, the last checkpoint gives exactly the final
    evaluation's accuracy on the same (whole) benchmarks by the same protocol: one engine,
    one set of prompts, the same weights (LoRA: the adapter on the base)."""
    run_dir = experiment["run_dir"]
    index = json.loads((run_dir / "run.json").read_text())
    curves = pd.read_csv(run_dir / "report" / "curves.csv")
    assert sorted(curves["strategy"].unique()) == sorted(TRAININGS)
    for label in TRAININGS:
        curve = curves[curves["strategy"] == label]
        assert list(curve["step"]) == [3, 3]  # eval_every_checkpoint 2: only the last of two
        summary = pd.read_csv(run_dir / index["stages"][f"eval-{label}"] / "summary.csv")
        final = summary[(summary["level"] == "task") & (summary["protocol"] == "letter")]
        expected = final.set_index("benchmark")["acc"]
        for row in curve.itertuples():
            assert row.acc == pytest.approx(expected[row.benchmark], abs=1e-12), label
    numbers = pd.read_csv(run_dir / "report" / "numbers.csv")
    assert (numbers["section"] == "curve").sum() == 3 * len(curves)
    assert index["planned"][:2] == ["data", "train-full-seed0"] and len(index["planned"]) == 10


def test_status_of_the_finished_run(experiment):
    from med42ray.status import format_status, run_status

    status = run_status(experiment["run_dir"])
    assert status["state"] == "finished"
    assert [s["name"] for s in status["stages"]] == json.loads(
        (experiment["run_dir"] / "run.json").read_text()
    )["planned"]
    assert {s["state"] for s in status["stages"]} == {"done"}
    assert len(format_status(status).splitlines()) == 2 + len(status["stages"])


ERROR_LEVEL = re.compile(r"\bERROR\b|\] E \d|^E\d{4}|Traceback|^error:|\bFAILED\b")


def test_console_of_the_resubmitted_run(experiment):
    """What `ray job logs` shows: each planned stage once with its place in the plan (cached or
    running, then done), the averages and the report's paths; at most 60 lines and none at
    error level. Ray's, the workers' and the libraries' output is in OUT/logs/<stage>.log."""
    run_dir, lines = experiment["run_dir"], experiment["logs"].splitlines()
    planned = json.loads((run_dir / "run.json").read_text())["planned"]
    assert len(lines) <= 60, experiment["logs"]
    assert not [line for line in lines if ERROR_LEVEL.search(line)], experiment["logs"]
    for i, name in enumerate(planned, 1):
        mine = [line for line in lines if line.startswith(f"[{i}/{len(planned)}] {name} ")]
        cached = "data" in name or "train" in name  # the first job finished these
        assert len(mine) == (1 if cached else 2), (name, mine)
        assert ("cached" in mine[0]) == cached and ("done in" in mine[-1]) != cached
    assert any(re.match(r" +scoring +\d+/\d+ requests", line) for line in lines)
    assert lines[-2] == f"report: {run_dir}/report/report.md"
    assert lines[-1].strip() == f"{run_dir}/report/report.html"
    logs = run_dir / "logs"
    assert {"run.log", "eval-base.log", "eval-lora-seed1.log"} <= {p.name for p in logs.iterdir()}
    assert "ScoringActor" in (logs / "eval-lora-seed1.log").read_text()  # the actors' output
    assert "train-full-seed0.log" in {p.name for p in logs.iterdir()}  # the stopped first job's
