"""Benchmark accuracy during training, scored off the training workers (`train.curve`).

Ray Train's checkpoint validation (Ray 2.60, alpha: `ValidationConfig` on the trainer,
`ray.train.report(..., validation=...)` in the recipe) starts `score_checkpoint` as a Ray task
of its own for every checkpoint the recipe marks (`med42ray.train.curve.curve_due`), while the
workers train on. The task asks for what one evaluation actor asks for (`actor_placement`:
its GPUs on a GPU cluster), loads the checkpoint's weights with the evaluation's own engine
and prompts (`run_eval`, in this process: no actor pool for a few hundred items), and writes
the point into the training stage's folder. Ray keeps a checkpoint until its validation has
run, and runs the ones a stopped run left pending when it resumes.

No peer evaluates off the training workers: TRL, Axolotl and LLaMA-Factory score a loss on
the workers themselves, between steps.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from med42ray import storage
from med42ray.config import ExperimentConfig, with_overrides
from med42ray.train.curve import CURVE_DIR, write_point

log = logging.getLogger(__name__)


def curve_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The evaluation a curve point runs: `train.curve.benchmarks` (all when empty), each
    limited to `train.curve.limit` items, by the first protocol, one engine."""
    curve = cfg.train.curve
    chosen = [b for b in cfg.eval.benchmarks if not curve.benchmarks or b.name in curve.benchmarks]
    protocol = cfg.eval.resolved_protocols()[0]
    return with_overrides(
        cfg,
        {
            "eval.benchmarks": [b.model_dump(mode="json") for b in chosen],
            "eval.limit": curve.limit,
            "eval.protocols": [protocol.model_dump(mode="json")],
            "eval.scoring": "loglikelihood",
            "eval.prompt_format": "multiple_choice",
            "eval.use_chat_template": False,
            "eval.num_actors": 1,
            "eval.tensor_parallel_size": 1,
        },
        "train.curve",
    )


def curve_validation(cfg: ExperimentConfig, export_to: str) -> Any | None:
    """The trainer's `ValidationConfig` for `cfg.train.curve` (None when off): points are
    written under `export_to` (the training stage's folder or URI)."""
    if not cfg.train.curve.eval_every_checkpoint:
        return None
    from ray.train import ValidationConfig, ValidationTaskConfig

    from med42ray.eval.placement import actor_placement

    placement = actor_placement(cfg.eval, cfg.resources)
    options = {"num_cpus": placement.num_cpus, "num_gpus": placement.num_gpus}
    if placement.resources:
        options["resources"] = dict(placement.resources)
    kwargs = {"experiment": curve_config(cfg).model_dump(mode="json"), "export_to": export_to}
    return ValidationConfig(
        fn=score_checkpoint,
        task_config=ValidationTaskConfig(fn_kwargs=kwargs),
        ray_remote_kwargs=options,
    )


def score_checkpoint(
    checkpoint: Any, *, experiment: dict[str, Any], export_to: str, step: int, tokens: int
) -> dict[str, Any]:
    """Score one checkpoint (Ray Train's validation function); write and return its point.

    A LoRA checkpoint is scored as its adapter on the base model, a full one as its model
    (`Exported.weights_to_score`), as the final evaluation scores them."""
    from med42ray.eval import run_eval
    from med42ray.train.checkpoint import curve_weights

    cfg = ExperimentConfig.model_validate(experiment)
    model, adapter = curve_weights(checkpoint).weights_to_score()
    with tempfile.TemporaryDirectory(prefix="med42ray-curve-") as tmp:
        summary = run_eval(
            cfg,
            Path(tmp),
            model=str(model) if model else None,
            adapter=str(adapter) if adapter else None,
            label=f"step {step}",
            parts=storage.join(export_to, CURVE_DIR, "parts"),
            in_process=True,
        )
    tasks = summary[summary["level"] == "task"]
    point = {
        "step": step,
        "tokens": tokens,
        "protocol": str(tasks["protocol"].iloc[0]),
        "benchmarks": {
            str(r.benchmark): {"acc": r.acc, "acc_stderr": r.acc_stderr, "n": int(r.n)}
            for r in tasks.itertuples()
        },
    }
    write_point(export_to, point)
    log.info("curve: step %d, %d tokens: %s", step, tokens, point["benchmarks"])
    return {f"curve/{b}": s["acc"] for b, s in point["benchmarks"].items()}
