"""MLflow tracking of `med42ray run`: one parent run per invocation, a child run per stage.

Each child holds the stage's key, whether it was cached, its wall time, its inputs and the
numbers of its summary as params and metrics; a training stage also logs its per-step curve
(loss, held-out loss, learning rate, gradient norm, tokens) from `metrics.jsonl`, an evaluation
its accuracy per protocol and benchmark. The parent holds the config and, at the end, the
report's files as artifacts. Sweeps log their trials through Ray's MLflow callback to the same
store (`tracking_uri`).

Tracking URI: `tune.mlflow_tracking_uri`, else `MLFLOW_TRACKING_URI`, else a SQLite store
`OUT/mlflow.db` beside the run (MLflow 3 refuses new file stores by default), its artifacts in
`OUT/mlartifacts` (MLflow's default, `./mlruns`, would land in whatever folder the command was
started from). Without `mlflow` installed (the `mlflow` extra) nothing is logged, and a log
line says so.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MAX_PARAM = 500  # MLflow's limit on a param value's length
NOT_IN_NAMES = re.compile(r"[^\w\-. :/]")  # what MLflow refuses in a name (`+`)


def mlflow_name(name: str) -> str:
    """`name` as MLflow takes a param or metric name: refused characters as `_`, and no
    `/` where the name would not be its own normalised path (`hf://org/x`: a source in a
    stage's inputs)."""
    name = NOT_IN_NAMES.sub("_", name)
    return name if posixpath.normpath(name) == name else name.replace("/", "_")


def tracking_uri(configured: str | None, out: Path) -> str:
    return (
        configured
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"
    )


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted `key: str(value)` params (lists and scalars as text)."""
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, inner in value.items():
            flat.update(flatten(inner, f"{prefix}{key}."))
        return flat
    text = json.dumps(value) if isinstance(value, list) else str(value)
    return {prefix.rstrip("."): text[:MAX_PARAM]}


def curve(folder: Path) -> list[tuple[str, float, int]]:
    """(metric, value, step) of a training stage's `metrics.jsonl`, and its benchmark curve
    (`curve.csv`: `curve_acc/<benchmark>` by step)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    keys = ("loss", "eval_loss", "lr", "grad_norm", "tokens", "real_tokens_per_s")
    points = []
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        points += [(k, float(row[k]), int(row["step"])) for k in keys if row.get(k) is not None]
    from med42ray.train.curve import CURVE_FILE

    scored = folder / CURVE_FILE
    if scored.is_file():
        import pandas as pd

        for row in pd.read_csv(scored).itertuples():
            points.append((f"curve_acc/{row.benchmark}", float(row.acc), int(row.step)))
    return points


def accuracies(summary: dict[str, Any]) -> dict[str, float]:
    """An evaluation stage's `acc` summary as `acc/<protocol>/<benchmark>` metrics."""
    return {
        mlflow_name(f"acc/{protocol}/{bench}"): float(value)
        for protocol, by_bench in summary.get("acc", {}).items()
        for bench, value in by_bench.items()
    }


class RunTracker:
    """Logs one `med42ray run` to MLflow (see the module docstring); a no-op without mlflow."""

    def __init__(self, name: str, out: Path, configured_uri: str | None, config: dict[str, Any]):
        self.client = self.parent = None
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            log.info("mlflow is not installed: the run is not logged to MLflow")
            return
        self.uri = tracking_uri(configured_uri, out)
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(name)
        beside = self.uri == tracking_uri(None, out) and not os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = (Path(out) / "mlartifacts").resolve().as_uri() if beside else None
        self.experiment = (
            found.experiment_id
            if found
            else self.client.create_experiment(name, artifact_location=artifacts)
        )
        self.parent = self.client.create_run(
            self.experiment, run_name=f"run {Path(out).name}", tags={"med42ray.out": str(out)}
        ).info.run_id
        self._params(self.parent, flatten(config))

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(mlflow_name(k), v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=items[start : start + 100])

    def _metrics(self, run_id: str, points: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        stamp = 0  # fixed timestamps: the same stage logs the same entries
        items = [Metric(mlflow_name(k), v, stamp, step) for k, v, step in points]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])

    def stage(self, stage: Any) -> None:
        """A child run for a finished (or cached) `StageResult`."""
        if self.client is None:
            return
        record = json.loads((stage.folder / "stage.json").read_text())
        child = self.client.create_run(
            self.experiment,
            run_name=stage.name,
            tags={
                "mlflow.parentRunId": self.parent,
                "med42ray.stage": stage.name,
                "med42ray.key": stage.key,
                "med42ray.cached": str(stage.cached).lower(),
            },
        ).info.run_id
        self._params(child, flatten(record.get("inputs", {}), "inputs."))
        numbers = {
            k: float(v)
            for k, v in stage.summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        numbers |= accuracies(stage.summary)
        numbers["stage_wall_s"] = float(record.get("wall_s", 0.0))
        self._metrics(child, [(k, v, 0) for k, v in numbers.items()] + curve(stage.folder))
        self.client.set_terminated(child, "FINISHED")

    def finish(self, report: Path | None, failed: bool = False) -> None:
        """The report's files as the parent's artifacts; the parent ended."""
        if self.client is None:
            return
        if report is not None and report.is_dir():
            self.client.log_artifacts(self.parent, str(report), "report")
        self.client.set_terminated(self.parent, "FAILED" if failed else "FINISHED")
