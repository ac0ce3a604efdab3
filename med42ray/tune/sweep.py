"""`run_sweep`: a Ray Tune sweep whose trials run the training stage's own `TorchTrainer`.

Each trial is a Tune function trainable that sets the trial's values on the experiment config
(`apply_trial`), builds the trainer `run_training` uses (`build_trainer`, no second training
path) with Ray's `TuneReportCallback` — the Ray Train V2 way to report a Train run to Tune —
and fits it. Optionally (`tune.evaluate`) it then scores the trial's exported model with
`run_eval` and reports `accuracy` and `<benchmark>_acc` as its final metrics.

Layout under the sweep's storage (`resources.storage_path`, else `out/ray_results`):

    <name>-sweep/            the Tune experiment (restored by `resume=True`)
    <name>-sweep-trials/<trial_id>/   each trial's Ray Train run (checkpoints)
    <name>-sweep-trials/<trial_id>/export/   its export (model/ and/or adapter/), published by
                             rank 0 beside the checkpoints; with `tune.evaluate`, parts/ too

and under `out`:

    trials.csv, trials.md    one row per trial: id, searched values, metric, status, error,
                             last step, checkpoint
    best/                    `best.json` (the best finished trial, its values and where its
                             export is) and, for a sweep on local storage, a copy of that
                             export (`model/` and/or `adapter/`, `metrics.jsonl`)
    mlflow.db                MLflow runs (SQLite) unless a tracking URI is configured
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from med42ray import storage
from med42ray.cluster import init_ray
from med42ray.config import ConfigError, ExperimentConfig, parse_config
from med42ray.tracking import tracking_uri
from med42ray.train.checkpoint import checkpoint_location
from med42ray.tune.space import apply_trial, param_space

log = logging.getLogger(__name__)

#: Test hook: a folder where every trial start writes one marker file `<trial_id>.<ns>`.
STARTS_ENV = "MED42RAY_SWEEP_STARTS"
#: A trial needs a little CPU of its own (Tune rejects an empty bundle); its Train workers
#: ask for theirs, so trials never hold the CPUs their workers need.
TRIAL_CPUS = 0.01
#: ASHA's horizon when `train.max_steps` is unset (epochs): large, rungs still start early.
DEFAULT_MAX_T = 1_000_000
TABLE_COLUMNS = ["trial_id", "status", "step", "error", "checkpoint", "trial_dir"]


# ------------------------------------------------------------------------------ the trial
def _trial(
    config: dict[str, Any],
    base: dict[str, Any] | None = None,
    train_data: str = "",
    eval_data: str | None = None,
    train_storage: str = "",
    reserved_cpus: float = 0.0,
    starts_dir: str | None = None,
) -> None:
    """One trial: the experiment with this trial's values, trained by the train stage."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from med42ray.train.trainer import build_trainer

    context = tune.get_context()
    trial_id = context.get_trial_id()
    if starts_dir:
        Path(starts_dir, f"{trial_id}.{time.time_ns()}").touch()
    cfg = apply_trial(parse_config(base or {}), config, source=f"trial {trial_id}")
    trial_dir = Path(context.get_trial_dir())
    name = trial_id if cfg.train.resume else f"{trial_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = build_trainer(
        cfg,
        train_data,
        trial_dir,
        eval_data=eval_data,
        callbacks=[TuneReportCallback()],
        name=name,
        storage_path=train_storage,
        reserved_cpus=reserved_cpus,
        export_to=storage.join(train_storage, name, "export"),
    )
    result = trainer.fit()
    if cfg.tune.evaluate:
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        parts = storage.join(train_storage, name, "parts")
        scores = _evaluate(cfg, result.checkpoint, trial_dir / "eval", parts)
        final = {k: v for k, v in (result.metrics or {}).items() if _is_number(v)}
        where = checkpoint_location(result.checkpoint)
        tune.report({**final, **scores, "checkpoint_path": where})


def _evaluate(cfg: ExperimentConfig, checkpoint: Any, out: Path, parts: str) -> dict[str, float]:
    """Score a trial's exported model on `eval.benchmarks`: `accuracy` + `<benchmark>_acc`.
    The actors read the export where rank 0 published it; the parts go to `parts`."""
    from med42ray.eval import run_eval
    from med42ray.train.checkpoint import export_checkpoint

    if not cfg.eval.benchmarks:
        raise ConfigError("tune.evaluate needs eval.benchmarks")
    exported, _ = export_checkpoint(checkpoint)
    model, adapter = exported.weights_to_score()
    summary = run_eval(
        cfg, out, model=model and str(model), adapter=adapter and str(adapter), parts=parts
    )
    return trial_scores(cfg, summary)


def trial_scores(cfg: ExperimentConfig, summary: pd.DataFrame) -> dict[str, float]:
    """`accuracy` (the mean over benchmarks) and `<benchmark>_acc` under the FIRST protocol of
    ``eval.resolved_protocols()``: the metric a sweep optimises must be one protocol's, not an
    average of protocols that measure different things."""
    first = cfg.eval.resolved_protocols()[0].label
    tasks = summary[(summary["level"] == "task") & (summary["protocol"] == first)]
    scores = {f"{row.benchmark}_acc": float(row.acc) for row in tasks.itertuples()}
    scores["accuracy"] = float(tasks["acc"].mean())
    return scores


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- the sweep
def run_sweep(
    cfg: ExperimentConfig,
    out: Path,
    train_data: str,
    eval_data: str | None = None,
    resume: bool = False,
    *,
    callbacks: list[Any] | None = None,
) -> pd.DataFrame:
    """Run (or, with `resume`, continue) the sweep of `cfg.tune`; return the trials table.

    `cfg` comes from `load_sweep`. Finished trials of an interrupted sweep are kept, unfinished
    ones resumed (their Train runs continue from their latest checkpoints), errored ones are
    not rerun. Failed trials are listed with status ERROR and their error; the sweep goes on.
    `callbacks` are extra Tune callbacks (a fresh sweep only; a resumed one keeps its own).
    """
    from ray import tune

    t = cfg.tune
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    init_ray(cfg.resources.ray_address)
    _check_optional_packages(cfg)
    storage = (cfg.resources.storage_path or str(out / "ray_results")).rstrip("/")
    name = f"{cfg.name}-sweep"
    experiment = f"{storage}/{name}"

    from med42ray.models import resolve_model_path

    resolve_model_path(cfg.model)  # build/download the base model once, before trials race
    concurrency = t.max_concurrent_trials or 1
    train_cpus = cfg.resources.num_workers * cfg.resources.cpus_per_worker
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            base=cfg.model_dump(mode="json"),
            train_data=str(train_data),
            eval_data=None if eval_data is None else str(eval_data),
            train_storage=f"{storage}/{name}-trials",
            reserved_cpus=concurrency * TRIAL_CPUS + (concurrency - 1) * train_cpus,
            starts_dir=os.environ.get(STARTS_ENV),
        ),
        {"CPU": TRIAL_CPUS},
    )
    if resume:
        if not tune.Tuner.can_restore(experiment):
            raise FileNotFoundError(f"{experiment}: no sweep to resume (run without --resume)")
        log.info("resuming sweep %s", experiment)
        tuner = tune.Tuner.restore(
            experiment,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        if _is_local(experiment) and Path(experiment).exists():
            raise FileExistsError(
                f"{experiment} exists: resume it (--resume) or choose another --out"
            )
        tuner = tune.Tuner(
            trainable,
            param_space=_search_space(cfg),
            tune_config=tune.TuneConfig(
                search_alg=_search_alg(cfg),
                scheduler=_scheduler(cfg),
                num_samples=t.num_samples,
                max_concurrent_trials=t.max_concurrent_trials if t.search_alg == "optuna" else None,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                callbacks=[*_mlflow_callbacks(cfg, out, name), *(callbacks or [])],
                verbose=1,
            ),
        )
    with _sweep_env():
        results = tuner.fit()
    table = trials_table(cfg, results)
    write_table(table, out, cfg)
    export_best(cfg, table, out / "best")
    return table


def _is_local(path: str) -> bool:
    return not storage.is_uri(path)


@contextlib.contextmanager
def _sweep_env():
    """Environment the Tune driver reads (and passes on to trial actors) during the sweep.

    - Trials stay in the job's working directory instead of their trial folder, so relative
      paths in the config (data sources, benchmark files) mean what they mean for `train`.
    - Intermediate reports may lack the selection metric (`eval_loss` comes every
      `eval_every` steps, `accuracy` after training); ASHA and the searchers skip those.
    """
    values = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_optional_packages(cfg: ExperimentConfig) -> None:
    if cfg.tune.search_alg == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError(
                "tune.search_alg: optuna needs the `optuna` package (pip install optuna)"
            ) from None


def _search_space(cfg: ExperimentConfig) -> dict[str, Any]:
    """Tune domains; with `search_alg: grid`, `choice` lists become grid axes too."""
    from ray import tune

    space = param_space(cfg)
    if cfg.tune.search_alg == "grid":
        for key, domain in cfg.tune.search_space.items():
            if "choice" in domain:
                space[key] = tune.grid_search(domain["choice"])
    if cfg.tune.search_alg == "optuna":
        grids = [k for k, d in cfg.tune.search_space.items() if "grid" in d]
        if grids:
            raise ConfigError(
                f"tune.search_space.{grids[0]}: grid is not supported by optuna; use choice"
            )
    return space


def _search_alg(cfg: ExperimentConfig):
    t = cfg.tune
    if t.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        class _OptunaSearch(OptunaSearch):
            """Optuna, skipping intermediate results without the metric (see above)."""

            def on_trial_result(self, trial_id: str, result: dict) -> None:
                if self.metric in result:
                    super().on_trial_result(trial_id, result)

        return _OptunaSearch(metric=t.metric, mode=t.mode, seed=cfg.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # The generator itself limits concurrency: Tune ignores `max_concurrent_trials` for it.
    return BasicVariantGenerator(max_concurrent=t.max_concurrent_trials or 0, random_state=cfg.seed)


def _scheduler(cfg: ExperimentConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = cfg.tune
    if t.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="step",  # optimiser steps, whatever `log_every` is
        metric=t.metric,
        mode=t.mode,
        max_t=cfg.train.max_steps or DEFAULT_MAX_T,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
        stop_last_trials=False,  # the last step must finish (export, evaluation)
    )


def _mlflow_callbacks(cfg: ExperimentConfig, out: Path, name: str) -> list[Any]:
    """Ray's MLflow logger, when `mlflow` is installed.

    Tracking URI: `med42ray.tracking.tracking_uri` (the config's, the environment's, else
    `out/mlflow.db`), the store `med42ray run` logs to.
    """
    try:
        import mlflow  # noqa: F401
    except ImportError:
        log.info("mlflow is not installed: sweep runs are not logged to MLflow")
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = tracking_uri(cfg.tune.mlflow_tracking_uri, out)
    return [
        MLflowLoggerCallback(
            tracking_uri=uri,
            experiment_name=name,
            tags={"experiment": cfg.name, "metric": cfg.tune.metric},
            save_artifact=False,
        )
    ]


# ---------------------------------------------------------------------------- the table
def trials_table(cfg: ExperimentConfig, results: Any) -> pd.DataFrame:
    """One row per trial: id, searched values, the metric, status, error, step, checkpoint."""
    trials = results._experiment_analysis.trials  # the ResultGrid's own trial list, in order
    keys = list(cfg.tune.search_space)
    metric = cfg.tune.metric
    rows = []
    for trial, result in zip(trials, results, strict=True):
        last = trial.last_result or {}
        row: dict[str, Any] = {"trial_id": trial.trial_id}
        row.update({key: trial.config.get(key) for key in keys})
        row[metric] = last.get(metric)
        if metric != "loss" and "loss" in last:
            row["loss"] = last["loss"]
        if cfg.tune.evaluate:
            row.update({k: v for k, v in last.items() if k.endswith("_acc")})
            row["accuracy"] = last.get("accuracy")
        row["status"] = trial.status
        row["step"] = last.get("step")
        row["error"] = _error_line(result.error) if result.error else ""
        row["checkpoint"] = _as_uri(last.get("checkpoint_path") or "", cfg)
        row["trial_dir"] = _as_uri(result.path, cfg)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["trial_id", *keys, metric, *TABLE_COLUMNS])


def _as_uri(path: str, cfg: ExperimentConfig) -> str:
    """Tune reports paths within the storage filesystem (`bucket/key`): give object-store
    ones their scheme back, so they can be read from anywhere."""
    store = cfg.resources.storage_path or ""
    if path and storage.is_uri(store) and not storage.is_uri(path):
        return f"{store.split('://', 1)[0]}://{path.lstrip('/')}"
    return path


def _error_line(error: BaseException) -> str:
    """The root cause in one line: the last `Type: message` line of the remote traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if _ERROR_LINE.match(line)]
    return (causes[-1] if causes else lines[-1] if lines else repr(error))[:500]


_ERROR_LINE = re.compile(r"^(?!ray\.)([A-Za-z_][\w.]*)(Error|Exception|Interrupt)\b.*: ")


def write_table(table: pd.DataFrame, out: Path, cfg: ExperimentConfig) -> None:
    table.to_csv(out / "trials.csv", index=False)
    ordered = _ranked(table, cfg)
    lines = [
        f"# Sweep `{cfg.name}`: {len(table)} trials on `{cfg.tune.metric}` ({cfg.tune.mode})",
        "",
        "| " + " | ".join(ordered.columns) + " |",
        "|" + "---|" * len(ordered.columns),
    ]
    for row in ordered.itertuples(index=False):
        cells = [_cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "trials.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _ranked(table: pd.DataFrame, cfg: ExperimentConfig) -> pd.DataFrame:
    metric = cfg.tune.metric
    if table.empty or metric not in table:
        return table
    return table.sort_values(
        metric, ascending=cfg.tune.mode == "min", na_position="last", kind="stable"
    )


def best_trial(table: pd.DataFrame, cfg: ExperimentConfig) -> pd.Series | None:
    """The best TERMINATED trial that has a metric and a final (exported) checkpoint."""
    from med42ray.train.checkpoint import is_final

    ranked = _ranked(table, cfg)
    for _, row in ranked.iterrows():
        if row["status"] != "TERMINATED" or pd.isna(row.get(cfg.tune.metric)):
            continue
        ckpt = row["checkpoint"]
        if not ckpt:
            continue
        if not is_final(ckpt):
            continue  # stopped early by ASHA: an intermediate checkpoint, no export
        return row
    return None


def export_best(cfg: ExperimentConfig, table: pd.DataFrame, dest: Path) -> Path | None:
    """`dest/best.json` for the best trial; its export copied into `dest` when it is on local
    storage (on object storage it stays where rank 0 published it: best.json says where)."""
    from med42ray.train.checkpoint import export_checkpoint
    from med42ray.train.trainer import merge_lora_export

    row = best_trial(table, cfg)
    if row is None:
        log.warning("no finished trial with a final checkpoint: no best model exported")
        return None
    dest.mkdir(parents=True, exist_ok=True)
    remote = storage.is_uri(row["checkpoint"])
    exported, state = export_checkpoint(row["checkpoint"], None if remote else dest)
    export_to = _parent(exported.adapter or exported.model) if remote else None
    exported, _ = merge_lora_export(cfg, exported, dest, export_to)
    written = {k: v for k, v in (("model", exported.model), ("adapter", exported.adapter)) if v}
    record = {
        "trial_id": row["trial_id"],
        "strategy": cfg.train.strategy,
        "metric": cfg.tune.metric,
        "mode": cfg.tune.mode,
        "value": float(row[cfg.tune.metric]),
        "config": {k: _plain(row[k]) for k in cfg.tune.search_space},
        "checkpoint": row["checkpoint"],
        "exported": {k: str(v) for k, v in written.items()},
        "step": state.get("step"),
    }
    (dest / "best.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return dest


def _parent(location: Any) -> str | None:
    """The export folder holding `location` (`<export>/adapter` -> `<export>`)."""
    return str(location).rstrip("/").rsplit("/", 1)[0] if location else None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
