"""`run_training`: the driver side of the training stage.

It opens the chat data with Ray Data, runs `FinetuneRecipe` on `resources.num_workers` Ray Train
workers (`TorchTrainer`), and copies what the final checkpoint holds into `out`:

    out/model/          Hugging Face causal LM (full; LoRA with `lora.merge_on_export`)
    out/adapter/        PEFT adapter (LoRA), loadable with AutoPeftModelForCausalLM
    out/metrics.jsonl   one JSON line of metrics per optimiser step (rank 0's view)
    out/train_result.json, out/config.yaml
    out/ray_results/    Ray Train storage (checkpoints), unless `resources.storage_path`

With `train.resume: true` (the default) a run reuses the Ray Train run folder
`<storage>/<name>-train`, so calling `run_training` again over the same `out` continues from its
latest checkpoint (e.g. with a larger `max_steps`); `resume: false` starts a fresh run folder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from med42ray.cluster import init_ray
from med42ray.config import ExperimentConfig
from med42ray.models import resolve_model_path
from med42ray.train.checkpoint import METRICS_FILE, Exported, export_checkpoint
from med42ray.train.data import read_chat_dataset

#: Test hook: "STEP:RANK:MARKER" makes worker RANK exit once at STEP (see FinetuneRecipe).
FAIL_ENV = "MED42RAY_TRAIN_FAIL_ONCE"


@dataclass
class TrainResult:
    model_dir: Path | None  # loadable with AutoModelForCausalLM (None: LoRA without merge)
    adapter_dir: Path | None  # LoRA adapter, loadable with AutoPeftModelForCausalLM
    metrics_path: Path
    final_metrics: dict[str, Any]
    trainable_params: int
    total_params: int
    wall_time_s: float
    checkpoint_path: str
    run_dir: str
    state: dict[str, Any] = field(default_factory=dict)

    def weights_to_score(self) -> tuple[Path | None, Path | None]:
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


def _cpus_left_for_data(train_cpus: float) -> bool:
    import ray

    return ray.cluster_resources().get("CPU", 0) - train_cpus >= 1


def run_name(cfg: ExperimentConfig) -> str:
    base = f"{cfg.name}-train"
    return base if cfg.train.resume else f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_trainer(
    cfg: ExperimentConfig,
    train_data: str | Path,
    out: Path,
    eval_data: str | Path | None = None,
    callbacks: list[Any] | None = None,
    name: str | None = None,
    storage_path: str | None = None,
    reserved_cpus: float = 0.0,
):
    """The `TorchTrainer` of the training stage: `FinetuneRecipe` on `resources.num_workers`.

    `run_training` fits it; a sweep trial fits the same trainer with Tune's report callback.
    `name`/`storage_path` default to `<name>-train` under `resources.storage_path` or
    `out/ray_results`; `reserved_cpus` are CPUs other work (e.g. concurrent sweep trials) holds,
    counted when deciding whether Ray Data can stream next to the workers.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from med42ray.train.recipe import train_loop_per_worker

    init_ray(cfg.resources.ray_address)
    model_path = resolve_model_path(cfg.model)
    res = cfg.resources
    worker = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        worker["GPU"] = res.gpus_per_worker
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
            "model_path": model_path,
            "fail_once": _fail_once_hook(),
            "datasets": sorted(datasets),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=worker
        ),
        run_config=ray.train.RunConfig(
            name=name or run_name(cfg),
            storage_path=storage_path or res.storage_path or str(Path(out) / "ray_results"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[], execution_options=ingest),
    )


def run_training(
    cfg: ExperimentConfig,
    train_data: str | Path,
    out: Path,
    eval_data: str | Path | None = None,
) -> TrainResult:
    """Fine-tune `cfg.model` on the chat data at `train_data`; write the export under `out`."""
    started = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, train_data, out, eval_data=eval_data)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    exported, state = export_checkpoint(result.checkpoint, out)
    (out / "config.yaml").write_text(cfg.to_yaml())
    outcome = TrainResult(
        model_dir=exported.model,
        adapter_dir=exported.adapter,
        metrics_path=out / METRICS_FILE,
        final_metrics=dict(result.metrics or {}),
        trainable_params=state["trainable_params"],
        total_params=state["total_params"],
        wall_time_s=time.perf_counter() - started,
        checkpoint_path=result.checkpoint.path,
        run_dir=result.path,
        state=state,
    )
    (out / "train_result.json").write_text(json.dumps(outcome.to_json(), indent=2))
    return outcome
