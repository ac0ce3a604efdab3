"""MLflow tracking of a run (`med42ray.tracking.RunTracker`) on stage folders as the stages
write them: a parent run, a child per stage, curves and accuracies, the report as artifacts
beside the store (never in the folder the command was started from)."""

from __future__ import annotations

import json
from pathlib import Path

from med42ray.stages import StageResult


def stage(folder: Path, name: str, summary: dict, metrics: list[dict] | None = None):
    folder.mkdir(parents=True)
    inputs = {"data": "abc", "sources": {"hf://GBaker/MedQA-USMLE-4-options": "sha"}}
    record = {"name": name, "key": "k" + name[-3:], "inputs": inputs, "wall_s": 1.5}
    (folder / "stage.json").write_text(json.dumps(record))
    if metrics:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return StageResult(name, record["key"], folder, summary, cached=False)


def test_a_run_is_a_parent_with_a_child_per_stage(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from med42ray.tracking import RunTracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    started_in = tmp_path / "cwd"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    out = tmp_path / "run"
    tracker = RunTracker("study", out, None, {"run": {"seeds": [0, 1]}, "name": "study"})
    steps = [{"step": s, "loss": 3.0 - s, "lr": 1e-3, "tokens": 100} for s in (1, 2, 3)]
    tracker.stage(stage(out / "train-full-seed0-x", "train-full-seed0", {"wall_s": 9.0}, steps))
    acc = {"acc": {"letter+chat": {"medqa": 0.25}}, "items": 12, "label": "full-seed0"}
    tracker.stage(stage(out / "eval-full-seed0-y", "eval-full-seed0", acc))
    (out / "report").mkdir()
    (out / "report" / "report.md").write_text("# report\n")
    tracker.finish(out / "report")

    client = MlflowClient(tracker.uri)
    assert tracker.uri == f"sqlite:///{(out / 'mlflow.db').resolve()}"
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FINISHED" and parent.data.params["run.seeds"] == "[0, 1]"
    kids = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert set(kids) == {"train-full-seed0", "eval-full-seed0"}
    train = kids["train-full-seed0"]
    assert train.data.tags["med42ray.cached"] == "false"
    assert train.data.params["inputs.data"] == "abc"
    # a hub source in a stage's inputs (the data stage's): a name MLflow takes
    assert train.data.params["inputs.sources.hf:__GBaker_MedQA-USMLE-4-options"] == "sha"
    history = client.get_metric_history(train.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, 0.0)]
    evaluation = kids["eval-full-seed0"].data.metrics
    assert evaluation["acc/letter_chat/medqa"] == 0.25 and evaluation["items"] == 12
    artifacts = client.list_artifacts(parent.info.run_id, "report")
    assert [a.path for a in artifacts] == ["report/report.md"]
    assert list((out / "mlartifacts").rglob("report.md")) and not any(started_in.iterdir())
