"""`run_training`: the driver side of the training stage.

It opens the chat data (a file, a folder or an object-store URI) with Ray Data, runs
`FinetuneRecipe` on `resources.num_workers` Ray Train workers (`TorchTrainer`), each of which
resolves the model on its own node, and writes:

    EXPORT/model/       Hugging Face causal LM (full; LoRA with `lora.merge_on_export`, merged
                        after training in a Ray task of its own, see `med42ray.train.merge`)
    EXPORT/adapter/     PEFT adapter (LoRA), loadable with AutoPeftModelForCausalLM
    out/merge_check.json  merged vs base + adapter logits (LoRA with `lora.merge_on_export`)
    out/metrics.jsonl   one JSON line of metrics per optimiser step (rank 0's view)
    out/train_result.json, out/config.yaml  (`transfers`: bytes the driver, the resuming
                        workers, the export and the merge moved)
    out/ray_results/    Ray Train storage (checkpoints), unless `resources.storage_path`

EXPORT is `export_to` (default `out`): a folder or an object-store URI; rank 0 uploads the
export there (each folder with `checksums.json`), never into a checkpoint. The driver downloads
no checkpoint: it reads the final one's `trainer_state.json` and `metrics.jsonl` only.

The Ray Train run is named by what its weights depend on (`run_name`: the model, the strategy,
every training setting but its length, the seed, the world size and the data). With
`train.resume: true` (the default) calling `run_training` again with the same inputs continues
that run from its latest checkpoint (e.g. with a larger `max_steps`); changed settings or data,
or the other strategy, train a run of their own; `resume: false` always starts a fresh one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from med42ray import console, storage
from med42ray.cluster import init_ray
from med42ray.config import ExperimentConfig, ResourcesConfig
from med42ray.stages import PROGRESS_FILE, fingerprint_inputs, stage_key
from med42ray.train.checkpoint import (
    METRICS_FILE,
    Exported,
    Location,
    as_location,
    checkpoint_location,
    export_checkpoint,
    filesystem_location,
    read_metrics,
)
from med42ray.train.curve import write_curve
from med42ray.train.data import read_chat_dataset

#: Test hook: "STEP:RANK:MARKER" makes worker RANK exit once at STEP (see FinetuneRecipe).
FAIL_ENV = "MED42RAY_TRAIN_FAIL_ONCE"


#: What the final trainer state says about bytes moved, copied into `TrainResult.transfers`.
STATE_TRANSFERS = (
    "checkpoint_bytes",
    "resume_fetched_bytes",
    "resume_files",
    "resumed_checkpoint",
    "export_uploaded_bytes",
)


@dataclass
class TrainResult:
    # locations: a Path when local, a URI string on object storage
    model_dir: Location | None  # loadable with AutoModelForCausalLM (None: LoRA without merge)
    adapter_dir: Location | None  # LoRA adapter, loadable with AutoPeftModelForCausalLM
    metrics_path: Path
    final_metrics: dict[str, Any]
    trainable_params: int
    total_params: int
    wall_time_s: float
    checkpoint_path: str
    run_dir: str
    state: dict[str, Any] = field(default_factory=dict)
    merge_check: dict[str, Any] | None = None  # LoRA merged after training (`train.merge`)
    transfers: dict[str, Any] = field(default_factory=dict)
    device_hours: float = 0.0  # wall x workers x devices per worker (GPUs, or 1 on CPU)

    def weights_to_score(self) -> tuple[Location | None, Location | None]:
        """(model, adapter) an evaluation loads (`Exported.weights_to_score`)."""
        return Exported(self.model_dir, self.adapter_dir).weights_to_score()

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _fail_once_hook() -> dict[str, Any] | None:
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return None
    step, rank, marker = spec.split(":", 2)
    # wait three of Ray Train's health-check intervals (2 s unless set), and at least 1.5 s,
    # before dying: a loaded machine can delay a poll
    poll = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0))
    return {"step": int(step), "rank": int(rank), "marker": marker, "delay_s": max(3 * poll, 1.5)}


def worker_resources(res: ResourcesConfig) -> dict[str, float]:
    """What each training worker (and the LoRA merge task) asks Ray for: its CPUs, its GPUs,
    and one unit of `accelerator_resource` per GPU (one on CPU) when set."""
    need = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        need["GPU"] = res.gpus_per_worker
    if res.accelerator_resource:
        need[res.accelerator_resource] = res.gpus_per_worker if res.use_gpu else 1
    return need


def device_hours(res: ResourcesConfig, wall_s: float) -> float:
    """Device-hours a run held: wall time x workers x GPUs per worker (one CPU worker counts
    as one device)."""
    per_worker = res.gpus_per_worker if res.use_gpu else 1
    return wall_s * res.num_workers * per_worker / 3600


def export_location(export_to: Location | None, out: Path) -> str:
    """Where the export goes: `export_to` (absolute, if a path) or `out`."""
    where = export_to if export_to is not None else out
    return str(where) if storage.is_uri(where) else str(Path(where).resolve())


def _cpus_left_for_data(train_cpus: float) -> bool:
    import ray

    return ray.cluster_resources().get("CPU", 0) - train_cpus >= 1


#: `train` settings that say how long or how often, not what is trained: a rerun that changes
#: only these continues the same Ray Train run (e.g. a larger `max_steps`).
RUN_LENGTH_FIELDS = frozenset(
    {
        "max_steps",
        "epochs",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "resume",
        "max_failures",
        "curve",  # what is scored along the way, not what is trained
    }
)


def run_key(cfg: ExperimentConfig, data: dict[str, Any]) -> str:
    """What a Ray Train run's weights depend on: the model, the strategy and every training
    setting but its length, the seed, the world size and the data (`data`: content hashes)."""
    blob = {
        "model": cfg.model.model_dump(mode="json"),
        "train": cfg.train.model_dump(mode="json", exclude=set(RUN_LENGTH_FIELDS)),
        "seed": cfg.seed,
        "world": [cfg.resources.num_workers, cfg.resources.use_gpu],
        "data": data,
    }
    return stage_key(blob)


def run_name(cfg: ExperimentConfig, data: dict[str, Any]) -> str:
    """`<name>-<strategy>-<run key>`: a rerun with the same inputs resumes that run; changed
    settings or data (or the other strategy) train a run of their own, never the old weights.
    With `train.resume: false` every call starts a fresh run."""
    base = f"{cfg.name}-{cfg.train.strategy}-{run_key(cfg, data)}"
    return base if cfg.train.resume else f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def data_identity(*paths: str | Path | None) -> dict[str, Any]:
    """Content hashes of the training (and held-out) files; URIs by name."""
    return fingerprint_inputs(str(p) for p in paths if p is not None)


def build_trainer(
    cfg: ExperimentConfig,
    train_data: str | Path,
    out: Path,
    eval_data: str | Path | None = None,
    callbacks: list[Any] | None = None,
    name: str | None = None,
    storage_path: str | None = None,
    reserved_cpus: float = 0.0,
    export_to: Location | None = None,
    validation: Any | None = None,
):
    """The `TorchTrainer` of the training stage: `FinetuneRecipe` on `resources.num_workers`.

    `run_training` fits it; a sweep trial fits the same trainer with Tune's report callback.
    `name`/`storage_path` default to `<name>-train` under `resources.storage_path` or
    `out/ray_results`; `reserved_cpus` are CPUs other work (e.g. concurrent sweep trials) holds,
    counted when deciding whether Ray Data can stream next to the workers. Rank 0 publishes
    the final export to `export_to` (default `out`). `validation` is Ray Train's
    `ValidationConfig` of the benchmark curve (`med42ray.checkpoint_eval.curve_validation`);
    without it no checkpoint is scored, whatever `train.curve` says (a sweep's trials).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from med42ray.train.recipe import train_loop_per_worker

    init_ray(cfg.resources.ray_address)
    res = cfg.resources
    # Ray Data gets the CPUs the workers leave; with none left its read tasks would wait
    # forever, so the (then small) data is read here, up front, instead of streamed (small
    # local files always are: read tasks would cost more to start than to run).
    no_cpu_left = not _cpus_left_for_data(res.num_workers * res.cpus_per_worker + reserved_cpus)
    paths = {"train": train_data, "eval": eval_data}
    datasets = {
        name: read_chat_dataset(path, in_driver=no_cpu_left)
        for name, path in paths.items()
        if path is not None
    }
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the deterministic split needs the file order
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": cfg.model_dump(mode="json"),
            "export_to": export_location(export_to, Path(out)),
            "fail_once": _fail_once_hook(),
            "datasets": sorted(datasets),
            "curve": validation is not None,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers,
            use_gpu=res.use_gpu,
            resources_per_worker=worker_resources(res),
        ),
        run_config=ray.train.RunConfig(
            name=name or run_name(cfg, data_identity(train_data, eval_data)),
            storage_path=storage_path or res.storage_path or str(Path(out) / "ray_results"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[], execution_options=ingest),
        validation_config=validation,
    )


def merge_lora_remote(cfg: ExperimentConfig, adapter: Location, export_to: str) -> dict[str, Any]:
    """Merge `adapter` into the base model in a fresh Ray task (one process, then gone) on a
    node with a training worker's resources; it publishes `<export_to>/model`. Returns
    `merge.merge_and_publish`'s {"check", "model", "transfers"}."""
    import ray

    from med42ray.train.merge import merge_and_publish

    init_ray(cfg.resources.ray_address)
    need = worker_resources(cfg.resources)
    task = ray.remote(
        num_cpus=need.pop("CPU"),
        num_gpus=need.pop("GPU", 0),
        resources=need,
        max_calls=1,
    )(merge_and_publish)
    return ray.get(task.remote(cfg.model_dump(mode="json"), str(adapter), export_to))


def merge_lora_export(
    cfg: ExperimentConfig, exported: Exported, out: Path, export_to: Location | None = None
) -> tuple[Exported, dict[str, Any] | None]:
    """With `lora.merge_on_export`, merge the exported adapter into `<export_to>/model`
    (default `out/model`) in a Ray task (`merge_lora_remote`), write `out/merge_check.json`
    and return the merge check."""
    exported, merged = _merge_lora(cfg, exported, Path(out), export_to)
    return exported, merged and merged["check"]


def _merge_lora(
    cfg: ExperimentConfig, exported: Exported, out: Path, export_to: Location | None
) -> tuple[Exported, dict[str, Any] | None]:
    if not (cfg.train.lora.merge_on_export and exported.adapter is not None):
        return exported, None
    from med42ray.train.merge import MERGE_CHECK_FILE

    merged = merge_lora_remote(cfg, exported.adapter, export_location(export_to, out))
    out.mkdir(parents=True, exist_ok=True)
    (out / MERGE_CHECK_FILE).write_text(json.dumps(merged["check"], indent=2))
    return Exported(as_location(merged["model"]), exported.adapter), merged


def follow_training(export_to: str):
    """The console's bar of a running training: the workers' `<export_to>/progress.json`
    (step of total, loss, tokens/s), read every few seconds while `fit` runs."""
    location = storage.join(export_to, PROGRESS_FILE)

    def read() -> dict[str, Any] | None:
        if not storage.is_file(location):
            return None
        last = json.loads(storage.read_text(location))
        return {
            "done": last["step"],
            "total": last["total_steps"],
            "loss": f"loss {last['loss']:.4f}",
            "speed": f"{last['tokens_per_s']:,.0f} tok/s",
        }

    shown = console.current()
    every_s = 5.0 if storage.is_uri(location) else 1.0
    return shown.following(shown.progress("training", None, "steps"), read, every_s)


def run_training(
    cfg: ExperimentConfig,
    train_data: str | Path,
    out: Path,
    eval_data: str | Path | None = None,
    data_key: str | None = None,
    export_to: Location | None = None,
    validation: Any | None = None,
) -> TrainResult:
    """Fine-tune `cfg.model` on the chat data at `train_data` (a file, folder or URI); publish
    the export to `export_to` (default `out`) and write the run's record under `out`.

    The Ray Train run is named by `run_name`: from `data_key` (a data stage's content key)
    when given, else from the content of the data files. With `validation` (the benchmark
    curve's `ValidationConfig`) the points its tasks wrote become `out/curve.csv`."""
    started = time.perf_counter()
    before = storage.transfers()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    export_to = export_location(export_to, out)
    data = {"data_stage": data_key} if data_key else data_identity(train_data, eval_data)
    name = run_name(cfg, data)
    trainer = build_trainer(
        cfg, train_data, out, eval_data, name=name, export_to=export_to, validation=validation
    )
    with follow_training(export_to):
        result = trainer.fit()
    if validation is not None:
        write_curve(export_to, out)
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    exported, state = export_checkpoint(result.checkpoint)  # two small files, no download
    (out / METRICS_FILE).write_text(read_metrics(result.checkpoint), encoding="utf-8")
    exported, merged = _merge_lora(cfg, exported, out, export_to)
    (out / "config.yaml").write_text(cfg.to_yaml())
    after = storage.transfers()
    transfers = {k: state[k] for k in STATE_TRANSFERS if k in state}
    transfers["driver"] = {k: after[k] - before[k] for k in after}
    if merged:
        transfers["merge"] = merged["transfers"]
    wall = time.perf_counter() - started
    outcome = TrainResult(
        model_dir=exported.model,
        adapter_dir=exported.adapter,
        metrics_path=out / METRICS_FILE,
        final_metrics=dict(result.metrics or {}),
        trainable_params=state["trainable_params"],
        total_params=state["total_params"],
        wall_time_s=wall,
        checkpoint_path=checkpoint_location(result.checkpoint),
        run_dir=filesystem_location(result.filesystem, result.path),
        state=state,
        merge_check=merged and merged["check"],
        transfers=transfers,
        device_hours=device_hours(cfg.resources, wall),
    )
    (out / "train_result.json").write_text(json.dumps(outcome.to_json(), indent=2))
    return outcome
