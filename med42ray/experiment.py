"""The whole experiment, top to bottom: `med42ray run CONFIG --out RUN_DIR`.

    data -> train (each of `run.strategies`) -> eval (base + each fine-tune) -> report

Each stage runs in a content-addressed folder `RUN_DIR/<stage>-<key>` (`med42ray.stages`): the
key hashes the config sections the stage reads, the content of its input files and the keys
of the stages it consumes. A rerun skips finished stages; a stage that was stopped midway runs
again in the same folder and resumes there (training from its last Ray Train checkpoint,
evaluation from its finished parts). `RUN_DIR/run.json` names the current folder of every
stage, written after each one, so `med42ray report RUN_DIR` can rebuild the report from
whatever has finished.

`RUN_DIR` may be an object-store URI (`--out s3://bucket/runs/7b`), which is what a cluster
whose nodes share no filesystem needs: the driver works in a local copy (`stages.RunFolder`),
every stage's outputs are uploaded before its marker, Ray Train checkpoints go to
`RUN_DIR/ray_results` (unless `resources.storage_path` says otherwise), the workers read the
shards, the evaluation actors the exported weights, straight from storage. A local `RUN_DIR` on
a cluster of several nodes is refused unless `resources.shared_filesystem` says it is shared.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from med42ray import console, storage
from med42ray.config import ExperimentConfig, seeded_label, strategy_config, with_overrides
from med42ray.stages import (
    RunFolder,
    StageResult,
    fingerprint_inputs,
    finish_index,
    new_index,
    record_stage,
    run_stage,
)
from med42ray.tracking import RunTracker

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- stage keys
def base_model_id(cfg: ExperimentConfig) -> str:
    """What identifies the base weights: the tiny model's recipe folder, a local folder's name
    and content hash (so new weights in the same folder rerun every stage), or hub id@revision.
    """
    from med42ray.models import folder_digest, local_model_dir, resolve_model_path

    if cfg.model.name_or_path == "tiny":
        return Path(resolve_model_path(cfg.model)).name  # builds it once; named by its recipe
    local = local_model_dir(cfg.model.name_or_path)
    if local is not None:
        return f"{local.name}-{folder_digest(local)[:12]}"
    return f"{cfg.model.name_or_path}@{cfg.model.revision or 'main'}"


def _hardware(cfg: ExperimentConfig) -> dict[str, Any]:
    res = cfg.resources
    return {"num_workers": res.num_workers, "use_gpu": res.use_gpu}


def _benchmark_files(cfg: ExperimentConfig) -> dict[str, str]:
    return fingerprint_inputs(b.path for b in cfg.eval.benchmarks if b.path)


# ------------------------------------------------------------------------------------ stages
def data_stage(cfg: ExperimentConfig, run: RunFolder, base_id: str) -> StageResult:
    """Prepare and decontaminate the training data (shared by every strategy)."""
    from med42ray.data import prepare_data

    inputs = {
        "config": cfg.fingerprint("data", "seed"),
        "index": [b.model_dump(mode="json") for b in cfg.eval.benchmarks],  # decontamination
        "tokenizer": base_id,
        "sources": fingerprint_inputs(s.path for s in cfg.data.sources),
        "benchmarks": _benchmark_files(cfg),
    }

    def work(folder: Path) -> dict[str, Any]:
        manifest = prepare_data(cfg, folder)
        return {"totals": manifest["totals"]}

    return run_stage(run, "data", inputs, work, cfg.to_yaml(), describe_data)


def describe_data(summary: dict[str, Any]) -> str:
    """The data stage in one line: records read, kept (train / held out) and removed."""
    from med42ray.data.manifest import CATEGORIES

    t = summary["totals"]
    removed = ", ".join(f"{t[k]:,} {k.replace('_', ' ')}" for k in CATEGORIES if t.get(k))
    return (
        f"{t['read']:,} records read, {t['kept']:,} kept ({t['kept_train']:,} train, "
        f"{t['kept_eval']:,} held out)" + (f"; {removed}" if removed else "")
    )


def describe_training(summary: dict[str, Any]) -> str:
    loss = summary.get("final_loss")
    share = summary["trainable_params"] / max(summary["total_params"], 1)
    return (f"final loss {loss:.4f}, " if loss is not None else "") + (
        f"{summary['trainable_params']:,} trainable parameters ({100 * share:.3g}%)"
    )


def describe_eval(summary: dict[str, Any]) -> str:
    """Items scored and the mean of the benchmarks' accuracies per protocol."""
    means = {p: sum(acc.values()) / len(acc) for p, acc in summary["acc"].items() if acc}
    shown = ", ".join(f"{p} {100 * m:.1f}%" for p, m in means.items())
    return f"{summary['items']:,} items; mean accuracy of the benchmarks: {shown}"


def train_stage(
    cfg: ExperimentConfig, run: RunFolder, data: StageResult, base_id: str, label: str = ""
):
    """Fine-tune with `cfg.train.strategy` on the data stage's shards; resumable in place.
    `label` names the stage (`train-<label>`; default: the strategy).

    The workers read the shards from the data stage's location, and rank 0 writes the export
    into this stage's location (in storage for a remote run): the driver moves no weights."""
    from med42ray.checkpoint_eval import curve_validation
    from med42ray.train import run_training

    strategy = cfg.train.strategy
    inputs = {
        "config": cfg.fingerprint("model", "train", "seed"),
        "hardware": _hardware(cfg),
        "base": base_id,
        "data": data.key,
    }
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": True})})
    has_held_out = data.summary.get("totals", {}).get("kept_eval", 0) > 0

    def work(folder: Path) -> dict[str, Any]:
        result = run_training(
            cfg,
            storage.join(data.location, "train"),
            folder,
            eval_data=storage.join(data.location, "eval") if has_held_out else None,
            data_key=data.key,
            export_to=run.location_of(folder),
            validation=curve_validation(cfg, str(run.location_of(folder))),
        )
        return {
            "strategy": strategy,
            "model_dir": _folder_name(result.model_dir),
            "adapter_dir": _folder_name(result.adapter_dir),
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "wall_s": result.wall_time_s,
            "final_loss": result.final_metrics.get("loss"),
        }

    name = f"train-{label or strategy}"
    return run_stage(run, name, inputs, work, cfg.to_yaml(), describe_training)


def _folder_name(location: str | Path | None) -> str | None:
    return str(location).rstrip("/").rsplit("/", 1)[-1] if location else None


def eval_stage(
    cfg: ExperimentConfig,
    run: RunFolder,
    label: str,
    source_key: str,
    model: str | None = None,
    adapter: str | None = None,
    earlier: Sequence[str] = (),
) -> StageResult:
    """Score one model (`label`: base, full, lora) on the config's benchmarks by every protocol;
    `model` and `adapter` are locations the actors read (from storage on a remote run).
    `earlier` names other `eval-<label>` folders of the run (other eval settings): the parts
    they hold for a protocol whose run key is unchanged are adopted, not scored again."""
    from med42ray.eval import run_eval

    inputs = {
        "config": cfg.fingerprint("eval", "model"),
        "benchmarks": _benchmark_files(cfg),
        "model": source_key,
        "adapter": adapter is not None,
    }

    def work(folder: Path) -> dict[str, Any]:
        summary = run_eval(
            cfg,
            folder,
            model=model,
            adapter=adapter,
            label=label,
            parts=storage.join(run.location_of(folder), "parts"),
            earlier_parts=[storage.join(run.location, e, "parts") for e in earlier],
        )
        tasks = summary[summary["level"] == "task"]
        acc = {
            str(protocol): dict(zip(part["benchmark"], part["acc"].astype(float), strict=True))
            for protocol, part in tasks.groupby("protocol", sort=False)
        }
        items = int(tasks.groupby("protocol", sort=False)["n"].sum().iloc[0])
        return {"label": label, "items": items, "acc": acc}

    return run_stage(run, f"eval-{label}", inputs, work, cfg.to_yaml(), describe_eval)


def earlier_evaluations(run: RunFolder, label: str) -> list[str]:
    """Folders of earlier `eval-<label>` stages of the run: those the previous `run.json`
    names (read before this run rewrites it) and those in the driver's copy."""
    from med42ray.stages import INDEX_FILE

    index = storage.join(run.location, INDEX_FILE)
    named = json.loads(storage.read_text(index)).get("stages", {}) if storage.is_file(index) else {}
    mine = re.compile(rf"eval-{re.escape(label)}-[0-9a-f]+")  # not eval-full-seed1-* for full
    found = {p.name for p in run.local.glob(f"eval-{label}-*") if mine.fullmatch(p.name)}
    return sorted(found | ({named[f"eval-{label}"]} if f"eval-{label}" in named else set()))


def trained_weights(stage: StageResult) -> tuple[str | None, str | None]:
    """(model, adapter) locations to score for a finished train stage
    (`Exported.weights_to_score`)."""
    from med42ray.train.checkpoint import Exported

    summary = stage.summary
    where = stage.location or str(stage.folder)
    return Exported(
        storage.join(where, summary["model_dir"]) if summary.get("model_dir") else None,
        storage.join(where, summary["adapter_dir"]) if summary.get("adapter_dir") else None,
    ).weights_to_score()


def check_run_folder(cfg: ExperimentConfig, run: RunFolder) -> None:
    """Refuse a local run folder on a cluster of several nodes (they share no filesystem,
    unless `resources.shared_filesystem` says so): a worker would write shards, checkpoints
    or scores where no other node can read them."""
    from med42ray.cluster import alive_nodes, ray_address

    if run.remote or cfg.resources.shared_filesystem or not ray_address(cfg.resources.ray_address):
        return
    nodes = alive_nodes(cfg.resources.ray_address)
    if nodes > 1:
        raise ValueError(
            f"--out {run.local}: a local folder, but the Ray cluster has {nodes} nodes that "
            "share no filesystem; use an object-store URI (--out s3://bucket/runs/NAME) or, "
            "if this folder is on a volume every node mounts, set resources.shared_filesystem"
        )


def best_of_sweep(folder: str, strategy: str) -> dict[str, Any]:
    """The best trial's values from a finished sweep (`<folder>/best/best.json`), checked to
    be a sweep of `strategy`."""
    path = storage.join(folder, "best", "best.json")
    if not storage.is_file(path):
        raise FileNotFoundError(
            f"run.from_sweep.{strategy}: {path}: no such file (a finished sweep's --out folder "
            "has best/best.json)"
        )
    record = json.loads(storage.read_text(path))
    swept = record.get("strategy", strategy)
    if swept != strategy:
        raise ValueError(f"run.from_sweep.{strategy}: {path}: a sweep of {swept}, not {strategy}")
    return dict(record["config"])


def apply_sweeps(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with each `run.from_sweep` strategy's best trial values added to its
    `run.overrides` (they win over the overrides they share keys with): the run's config.yaml
    (which keeps `from_sweep`, where they came from) and stage keys then carry the values
    actually trained with."""
    if not cfg.run.from_sweep:
        return cfg
    overrides = {s: dict(v) for s, v in cfg.run.overrides.items()}
    for strategy, folder in cfg.run.from_sweep.items():
        best = best_of_sweep(folder, strategy)
        overrides[strategy] = {**overrides.get(strategy, {}), **best}
        log.info("run.from_sweep.%s: %s", strategy, best)
    return with_overrides(cfg, {"run.overrides": overrides}, "run.from_sweep")


# ------------------------------------------------------------------------------ fail fast
def check_inputs(cfg: ExperimentConfig) -> dict[str, Any]:
    """Open every source and load and check every benchmark, without Ray and without reading a
    corpus: a bad path or a broken benchmark fails here, in one line, before hours of work.

    Returns {"sources": {name: {files, bytes}}, "benchmarks": {name: provenance}}.
    """
    from med42ray.benchmarks import load_benchmark_with_provenance
    from med42ray.data import check_inputs as check_data_inputs
    from med42ray.eval.catalog import config_benchmarks

    summary = check_data_inputs(cfg) if cfg.data.sources else {"sources": {}, "benchmarks": {}}
    benchmarks = dict(summary.get("benchmarks", {}))
    for entry in config_benchmarks(cfg):
        if entry.name not in benchmarks:
            loaded = load_benchmark_with_provenance(
                entry.name, entry.path, mirror=cfg.resources.hub_mirror
            )
            benchmarks[entry.name] = loaded.provenance.to_dict()
    return {**summary, "benchmarks": benchmarks}


# -------------------------------------------------------------------------------- the recipe
def run_stages(cfg: ExperimentConfig, run: RunFolder, tracker: RunTracker) -> None:
    """Data; each strategy's fine-tune per seed; evaluation of the base and of every fine-tune;
    each stage recorded in `run.json` and tracked as it finishes."""
    seeds = cfg.run.seeds or [None]
    trainings = [(s, seed, seeded_label(s, seed)) for seed in seeds for s in cfg.run.strategies]
    earlier = {m: earlier_evaluations(run, m) for m in ["base", *(t[2] for t in trainings)]}
    labels = [t[2] for t in trainings]
    planned = ["data", *(f"train-{label}" for label in labels)]
    planned += ["eval-base"] if cfg.run.evaluate_base else []
    planned += [f"eval-{label}" for label in labels]
    index = new_index(run, cfg.name, cfg.run.strategies, planned)
    console.current().plan(planned)

    def record(stage: StageResult) -> StageResult:
        record_stage(run, index, stage)
        tracker.stage(stage)
        return stage

    base_id = base_model_id(cfg)
    data = record(data_stage(cfg, run, base_id))
    trained = {}
    for strategy, seed, label in trainings:
        settings = strategy_config(cfg, strategy, seed)
        trained[label] = record(train_stage(settings, run, data, base_id, label))
    if cfg.run.evaluate_base:
        record(eval_stage(cfg, run, "base", base_id, earlier=earlier["base"]))
    for label, stage in trained.items():
        model, adapter = trained_weights(stage)
        record(eval_stage(cfg, run, label, stage.key, model, adapter, earlier[label]))
    finish_index(run, index)


def run_experiment(cfg: ExperimentConfig, out: str | Path) -> Path:
    """Data, each strategy's fine-tune, evaluation of base and fine-tunes, report.

    Returns the report folder (the driver's copy; with an object-store `out` it is uploaded to
    `out/report` too). Safe to call again on the same `out`: finished stages are reused, an
    interrupted one resumes.
    """
    from med42ray.report import build_report

    check_inputs(cfg)
    cfg = apply_sweeps(cfg)
    run = RunFolder.open(out)
    check_run_folder(cfg, run)
    if run.remote and not cfg.resources.storage_path:
        resources = cfg.resources.model_copy(
            update={"storage_path": storage.join(run.remote, "ray_results")}
        )
        cfg = cfg.model_copy(update={"resources": resources})
    run.local.mkdir(parents=True, exist_ok=True)
    (run.local / "config.yaml").write_text(cfg.to_yaml())
    run.publish("config.yaml")
    tracker = RunTracker(
        cfg.name, run.local, cfg.tune.mlflow_tracking_uri, cfg.model_dump(mode="json")
    )
    try:
        run_stages(cfg, run, tracker)
        report = build_report([run.local], run.local / "report")
        run.publish("report")
    except BaseException:
        tracker.finish(None, failed=True)
        raise
    tracker.finish(report)
    return report
