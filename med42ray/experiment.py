"""The whole experiment, top to bottom: `med42ray run CONFIG --out RUN_DIR`.

    data -> train (each of `run.strategies`) -> eval (base + each fine-tune) -> report

Each stage runs in a content-addressed folder `RUN_DIR/<stage>-<key>` (`med42ray.stages`): the
key hashes the config sections the stage reads, the content of its input files and the keys
of the stages it consumes. A rerun skips finished stages; a stage that was stopped midway runs
again in the same folder and resumes there (training from its last Ray Train checkpoint,
evaluation from its finished parts). `RUN_DIR/run.json` names the current folder of every
stage, written after each one, so `med42ray report RUN_DIR` can rebuild the report from
whatever has finished.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from med42ray.config import ExperimentConfig, strategy_config
from med42ray.stages import (
    StageResult,
    fingerprint_inputs,
    finish_index,
    new_index,
    record_stage,
    run_stage,
)

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
def data_stage(cfg: ExperimentConfig, run_dir: Path, base_id: str) -> StageResult:
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

    return run_stage(run_dir, "data", inputs, work, cfg.to_yaml())


def train_stage(cfg: ExperimentConfig, run_dir: Path, data: StageResult, base_id: str):
    """Fine-tune with `cfg.train.strategy` on the data stage's shards; resumable in place."""
    from med42ray.train import run_training

    strategy = cfg.train.strategy
    inputs = {
        "config": cfg.fingerprint("model", "train", "seed"),
        "hardware": _hardware(cfg),
        "base": base_id,
        "data": data.key,
    }
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": True})})
    held_out = data.folder / "eval"

    def work(folder: Path) -> dict[str, Any]:
        result = run_training(
            cfg,
            data.folder / "train",
            folder,
            eval_data=held_out if held_out.is_dir() else None,
            data_key=data.key,
        )
        return {
            "strategy": strategy,
            "model_dir": result.model_dir and result.model_dir.name,
            "adapter_dir": result.adapter_dir and result.adapter_dir.name,
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "wall_s": result.wall_time_s,
            "final_loss": result.final_metrics.get("loss"),
        }

    return run_stage(run_dir, f"train-{strategy}", inputs, work, cfg.to_yaml())


def eval_stage(
    cfg: ExperimentConfig,
    run_dir: Path,
    label: str,
    source_key: str,
    model: Path | None = None,
    adapter: Path | None = None,
) -> StageResult:
    """Score one model (`label`: base, full, lora) on the config's benchmarks."""
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
            model=str(model) if model else None,
            adapter=str(adapter) if adapter else None,
            label=label,
        )
        tasks = summary[summary["level"] == "task"]
        acc = dict(zip(tasks["benchmark"], tasks["acc"].astype(float), strict=True))
        return {"label": label, "items": int(tasks["n"].sum()), "acc": acc}

    return run_stage(run_dir, f"eval-{label}", inputs, work, cfg.to_yaml())


def trained_weights(stage: StageResult) -> tuple[Path | None, Path | None]:
    """(model, adapter) to score for a finished train stage (`Exported.weights_to_score`)."""
    from med42ray.train.checkpoint import Exported

    summary = stage.summary
    return Exported(
        stage.folder / summary["model_dir"] if summary.get("model_dir") else None,
        stage.folder / summary["adapter_dir"] if summary.get("adapter_dir") else None,
    ).weights_to_score()


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
def run_experiment(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Data, each strategy's fine-tune, evaluation of base and fine-tunes, report.

    Returns the report folder. Safe to call again on the same `run_dir`: finished stages are
    reused, an interrupted one resumes.
    """
    from med42ray.report import build_report

    check_inputs(cfg)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    index = new_index(run_dir, cfg.name, cfg.run.strategies)

    base_id = base_model_id(cfg)
    data = data_stage(cfg, run_dir, base_id)
    record_stage(run_dir, index, data)
    trained = {}
    for strategy in cfg.run.strategies:
        trained[strategy] = train_stage(strategy_config(cfg, strategy), run_dir, data, base_id)
        record_stage(run_dir, index, trained[strategy])
    if cfg.run.evaluate_base:
        record_stage(run_dir, index, eval_stage(cfg, run_dir, "base", base_id))
    for strategy, stage in trained.items():
        model, adapter = trained_weights(stage)
        record_stage(run_dir, index, eval_stage(cfg, run_dir, strategy, stage.key, model, adapter))
    finish_index(run_dir, index)
    return build_report([run_dir], run_dir / "report")
