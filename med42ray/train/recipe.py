"""The fine-tuning recipe that every Ray Train worker runs: setup -> train -> save -> cleanup.

Features (from `ExperimentConfig.train`): full or LoRA strategy; DeepSpeed ZeRO 0-3 (optional
CPU offload) or plain DDP; chat-template tokenisation with assistant-only labels; packing with
per-sample position ids (or per-batch padding); AdamW with warmup + cosine/linear/constant
schedule; gradient accumulation and clipping; fp32/bf16/fp16; gradient checkpointing; held-out
eval loss; checkpoints every `checkpoint_every` steps and at the end (kept to the last K by Ray
Train); resume from the latest checkpoint, bit-for-bit on the same data order, fetching only this
rank's files of it; per-step metrics reported through `ray.train.report` and kept in
`metrics.jsonl` inside every checkpoint; the final export published by rank 0 to `export_to`
(a folder or an object-store URI), outside the checkpoint.

There is one loop. What differs between strategies lives in a `Strategy`
(`med42ray.train.strategies`), what differs between DeepSpeed and DDP in a `TrainingEngine`
(`med42ray.train.engines`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from med42ray import storage
from med42ray.config import ExperimentConfig
from med42ray.models import load_tokenizer, resolve_model_path
from med42ray.stages import PROGRESS_FILE
from med42ray.train.checkpoint import (
    CURVE_EXPORT_DIR,
    METRICS_FILE,
    TRAINER_STATE,
    checkpoint_location,
    publish,
    rng_file,
)
from med42ray.train.curve import curve_due
from med42ray.train.data import ShardedSchedule, build_schedule, owned_shards, shard_samples
from med42ray.train.engines import build_engine
from med42ray.train.metrics import ModelFlops, mfu, peak_flops, peak_memory_mb
from med42ray.train.optim import resolve_precision
from med42ray.train.packing import Row, collate
from med42ray.train.strategies import build_strategy, count_parameters

log = logging.getLogger(__name__)
#: Seconds between two progress records of a training in object storage (a PUT each).
PROGRESS_EVERY_S = 10.0


def all_reduce(values: list[float], device, op: str = "sum") -> list[float]:
    """Sum (or min/max) a few numbers over the workers."""
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(
            tensor,
            op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op],
        )
    return tensor.tolist()


def all_gather(value: Any) -> list[Any]:
    """Every worker's `value` (picklable), in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


STAGING_PREFIX = "med42ray-"


def staging(kind: str) -> tempfile.TemporaryDirectory:
    """A node-local temp folder for a checkpoint, an export or a resume, named by this process
    (`med42ray-<kind>-<pid>-...`), so `remove_stale_staging` can tell a dead worker's leftovers."""
    return tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{kind}-{os.getpid()}-")


def remove_stale_staging(root: str | None = None) -> list[str]:
    """Remove staging folders of workers that died mid-save (a killed node's restarted
    workers, a trial stopped by ASHA): their process no longer exists. Returns what went."""
    import re
    import shutil

    root = root or tempfile.gettempdir()
    gone = []
    for path in Path(root).glob(f"{STAGING_PREFIX}*-*-*"):
        match = re.match(rf"{STAGING_PREFIX}(resume|ckpt|export)-(\d+)-", path.name)
        if match and path.is_dir() and not Path(f"/proc/{match.group(2)}").exists():
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path.name)
    return gone


class Laps:
    """Named wall-clock laps, for a one-line account of where set-up time went."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        total = sum(s for _, s in self.laps)
        return f"{total:.1f}s (" + ", ".join(f"{n} {s:.1f}s" for n, s in self.laps) + ")"


class FinetuneRecipe:
    """One worker's view of a fine-tuning run; see the module docstring for the features."""

    def __init__(self, config: dict[str, Any]):
        import ray.train

        self.cfg = ExperimentConfig.model_validate(config["experiment"])
        self.export_to: str = config["export_to"]
        self.fail_once: dict[str, Any] | None = config.get("fail_once")
        self.dataset_names: list[str] = config.get("datasets", ["train"])
        # the trainer has the curve's validation task (`build_trainer(validation=...)`)
        self.scores_curve: bool = config.get("curve", False)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.use_gpu = self.cfg.resources.use_gpu
        self.step = 0
        self.resumed_from: int | None = None
        self.resume_record: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._progress_at = 0.0

    # ----------------------------------------------------------------------------- setup
    def setup(self) -> None:
        import ray.train.torch
        from transformers import set_seed

        t = self.cfg.train
        laps = Laps()
        set_seed(t.seed)
        self.device = ray.train.torch.get_device()
        # resolved here, on this worker's node: a path the driver resolved means nothing here
        self.model_path = resolve_model_path(self.cfg.model, self.cfg.resources.hub_mirror)
        self.tokenizer = load_tokenizer(self.cfg.model, self.model_path)
        self.pad_id = self.tokenizer.pad_token_id
        self.precision = resolve_precision(t.precision, self.use_gpu)
        self.strategy = build_strategy(self.cfg, self.model_path)
        self.engine = build_engine(self.cfg, self.strategy, self.precision, self.world)
        laps("tokenizer+engine")
        self._setup_data()
        laps("data")
        with self.engine.model_init_context():
            torch.manual_seed(t.seed)  # LoRA's A matrices: the same on every worker
            model = self.strategy.build_model(self.engine.load_dtype, self.use_gpu)
        self.trainable_params, self.total_params = count_parameters(model)
        laps("model")
        self.engine.wrap(model, self.total_steps)
        laps("wrap")
        self.peak_flops = peak_flops(self.use_gpu, self.precision)
        self.flops = ModelFlops.of(self.engine.module, self.trainable_params)
        self._resume()
        laps("resume")
        if self.rank == 0:
            log.info("setup took %s", laps)

    def _setup_data(self) -> None:
        t = self.cfg.train
        num_shards = t.data_shards or self.world
        shards = owned_shards(self.rank, self.world, num_shards)
        by_shard = shard_samples("train", self.tokenizer, t.max_seq_len, shards, num_shards)
        rows_per_step = t.micro_batch_size * t.gradient_accumulation_steps
        rows_per_shard = rows_per_step * self.world // num_shards
        self.schedule: ShardedSchedule = build_schedule(
            by_shard, t.max_seq_len, self.pad_id, t.packing, rows_per_shard, t.seed
        )
        # Every worker takes the same number of steps: the smallest shard decides.
        (spe,) = all_reduce([self.schedule.steps_per_epoch], self.device, op="min")
        self.steps_per_epoch = int(spe)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"too little training data: a step needs {rows_per_step} rows per worker "
                f"x {self.world} workers, worker {self.rank} has {len(self.schedule.rows)}"
            )
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        s = self.schedule.stats
        keys = ["samples", "truncated", "dropped_no_labels", "rows", "real_tokens", "row_slots"]
        totals = all_reduce([getattr(s, k) for k in keys], self.device)
        self.data_stats = {k: int(v) for k, v in zip(keys, totals, strict=True)}
        self.data_stats["packed_padding_share"] = 1 - totals[4] / totals[5] if totals[5] else 0.0
        self.data_stats["steps_per_epoch"] = self.steps_per_epoch
        eval_samples = (
            shard_samples("eval", self.tokenizer, t.max_seq_len, [self.rank], self.world)
            if "eval" in self.dataset_names
            else {self.rank: []}
        )
        self.eval_rows: list[Row] = (
            build_schedule(eval_samples, t.max_seq_len, self.pad_id, t.packing, 1, 0).rows
            if eval_samples[self.rank]
            else []
        )
        (has_eval,) = all_reduce([len(self.eval_rows)], self.device)
        self.has_eval = has_eval > 0

    def _resume(self) -> None:
        """Continue from the latest checkpoint Ray Train hands us (restart or resumed run).

        Only this rank's files are read (`resume_files`): the trainer state, the metrics, its
        RNG state and what the engine loads for it (`TrainingEngine.checkpoint_files`), fetched
        into a temp folder from object storage, read in place from a local folder. What every
        rank fetched goes into the trainer state (`resume_record`).
        """
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        location = checkpoint_location(checkpoint)
        listing = storage.list_files(location)
        wanted = [TRAINER_STATE, METRICS_FILE, rng_file(self.rank)]
        wanted += self.engine.checkpoint_files(sorted(listing), self.rank, self.world)
        wanted = [f for f in dict.fromkeys(wanted) if f in listing]
        with staging("resume") as tmp:
            fetched, folder = 0, Path(location)
            if storage.is_uri(location):
                fetched, folder = storage.download(location, tmp, files=wanted), Path(tmp)
            self._load_checkpoint(folder)
        everyone = all_gather({"bytes": fetched, "files": wanted})
        self.resume_record = {
            "resumed_checkpoint": location,
            "checkpoint_bytes": sum(listing.values()),
            "resume_fetched_bytes": [r["bytes"] for r in everyone],
            "resume_files": [r["files"] for r in everyone],
        }
        if self.rank == 0:
            log.info(
                "resumed from step %d (%s): fetched %s of %d bytes",
                self.step,
                location,
                self.resume_record["resume_fetched_bytes"],
                self.resume_record["checkpoint_bytes"],
            )

    def _load_checkpoint(self, folder: Path) -> None:
        """Engine state, step, metrics history and this rank's RNG state from `folder`."""
        self.engine.load(folder)
        state = json.loads((folder / TRAINER_STATE).read_text())
        self.step = self.resumed_from = int(state["step"])
        lines = (folder / METRICS_FILE).read_text().splitlines()
        self.history = [json.loads(line) for line in lines if line.strip()]
        rng_path = folder / rng_file(self.rank)
        if rng_path.is_file():
            set_rng_state(torch.load(rng_path, weights_only=False))

    # ----------------------------------------------------------------------------- train
    def _micro_batches(self, rows: list[Row]) -> list[dict[str, Any]]:
        """The step's rows as collated micro-batches on this worker's device."""
        mb = self.cfg.train.micro_batch_size
        attn = getattr(self.engine.module.config, "_attn_implementation", None)
        batches = []
        for start in range(0, len(rows), mb):
            batch = collate(rows[start : start + mb], self.pad_id, attn)
            batch["inputs"] = {
                k: v.to(self.device) if torch.is_tensor(v) else v
                for k, v in batch["inputs"].items()
            }
            batches.append(batch)
        return batches

    #: per-micro-batch counts summed over the step and the workers (`_step_metrics`)
    STEP_SUMS = (
        "num_tokens",
        "num_real_tokens",
        "num_label_tokens",
        "num_samples",
        "attention_pairs",
    )

    def train(self) -> None:
        t = self.cfg.train
        self.engine.train()
        steps = self.schedule.steps(self.step, self.steps_per_epoch)
        while self.step < self.total_steps:
            _, rows = next(steps)
            lr = self.engine.lr
            start, cpu_start = time.perf_counter(), time.process_time()
            sums = self._train_step(self._micro_batches(rows))
            self.step += 1
            metrics = self._step_metrics(sums, lr, time.perf_counter() - start)
            metrics["cpu_time_s"] = time.process_time() - cpu_start  # this worker, all threads
            self._maybe_fail()
            final = self.step == self.total_steps
            if self.has_eval and (final or (t.eval_every and self.step % t.eval_every == 0)):
                metrics["eval_loss"] = self.evaluate()
            self.history.append(metrics)
            if self.rank == 0:
                self._report_progress(metrics, final)
            if final or (t.checkpoint_every and self.step % t.checkpoint_every == 0):
                self.save_checkpoint(metrics, final=final)
            elif self.step % t.log_every == 0:
                import ray.train

                ray.train.report(metrics)

    def _report_progress(self, metrics: dict[str, Any], final: bool) -> None:
        """The last step, loss and tokens/s in `<export_to>/progress.json`, what the driver's
        console and `med42ray status` show: every step in a folder, at most every
        `PROGRESS_EVERY_S` in object storage (one PUT each). Never fails the training."""
        now = time.time()
        remote = storage.is_uri(self.export_to)
        if remote and not final and now - self._progress_at < PROGRESS_EVERY_S:
            return
        record = {
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": metrics["loss"],
            "tokens_per_s": metrics["real_tokens_per_s"],
            "updated_at": now,
        }
        try:
            storage.write_text(storage.join(self.export_to, PROGRESS_FILE), json.dumps(record))
        except Exception:
            log.warning("could not write %s/%s", self.export_to, PROGRESS_FILE, exc_info=True)
        self._progress_at = now

    def _train_step(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over this worker's micro-batches, the loss normalised by the
        label tokens of the whole step on all workers (one all-reduce of one number before
        the first forward; see `med42ray.train.engines`). Returns the step's sums over all
        workers: `loss` (the step's token mean) and the `STEP_SUMS` counts."""
        local = sum(b["num_label_tokens"] for b in batches)
        (step_tokens,) = all_reduce([local], self.device)
        loss_share = 0.0
        for batch in batches:
            loss = self.engine.forward(batch["inputs"], max(step_tokens, 1.0))
            self.engine.backward(loss)
            self.engine.step()
            loss_share += loss.item()
        counts = [sum(b[k] for b in batches) for k in self.STEP_SUMS]
        totals = all_reduce([loss_share, *counts], self.device)
        return dict(zip(("loss", *self.STEP_SUMS), totals, strict=True))

    def _step_metrics(self, sums: dict[str, float], lr: float, seconds: float) -> dict[str, Any]:
        tokens, real = sums["num_tokens"], sums["num_real_tokens"]
        metrics = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "loss": sums["loss"],
            "lr": lr,
            "grad_norm": self.engine.grad_norm,
            "step_time_s": seconds,
            "tokens_per_s": tokens / seconds,
            "real_tokens_per_s": real / seconds,
            "samples_per_s": sums["num_samples"] / seconds,
            "tokens": int(real),  # non-padding, all workers: the budget the report matches
            "label_tokens": int(sums["num_label_tokens"]),
            "padding_share": 1 - real / tokens if tokens else 0.0,
            "peak_memory_mb": peak_memory_mb(self.use_gpu),
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
        }
        flops = self.flops.step_flops(real, sums["attention_pairs"], sums["num_label_tokens"])
        metrics["model_tflops_per_s_per_device"] = flops / seconds / self.world / 1e12
        utilisation = mfu(flops / seconds / self.world, self.peak_flops)
        if utilisation is not None:
            metrics["mfu"] = utilisation
        if self.rank == 0 and self.step % self.cfg.train.log_every == 0:
            log.info(
                "step %d/%d loss %.4f lr %.2e %.0f tok/s",
                self.step,
                self.total_steps,
                metrics["loss"],
                lr,
                metrics["real_tokens_per_s"],
            )
        return {k: v for k, v in metrics.items() if v is not None}

    def _maybe_fail(self) -> None:
        """Test hook: the named rank dies once at the named step (a marker file says so).

        It waits a few Ray Train health-check intervals first (`delay_s`), so the controller
        has registered the checkpoint reported just before, as it would have in a real run.
        """
        fail = self.fail_once
        if not fail or self.step != fail["step"] or self.rank != fail["rank"]:
            return
        marker = Path(fail["marker"])
        if not marker.exists():
            marker.write_text(f"killed rank {self.rank} at step {self.step}\n")
            time.sleep(fail.get("delay_s", 6.0))
            os._exit(1)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted loss on the held-out rows; every worker runs the same batch count."""
        mb = self.cfg.train.micro_batch_size
        (batches,) = all_reduce([math.ceil(len(self.eval_rows) / mb)], self.device, op="max")
        filler = (self.eval_rows or self.schedule.rows)[:1]
        self.engine.train(False)
        total = [0.0, 0.0]
        for i in range(int(batches)):
            rows = self.eval_rows[i * mb : (i + 1) * mb]
            (batch,) = self._micro_batches(rows or filler)
            loss = self.engine.forward(batch["inputs"])
            if rows:  # fillers only keep ZeRO-3's collective forwards in step
                total[0] += loss.item() * batch["num_label_tokens"]
                total[1] += batch["num_label_tokens"]
        self.engine.train(True)
        loss_sum, count = all_reduce(total, self.device)
        return loss_sum / count

    # ------------------------------------------------------------------------------ save
    def save_checkpoint(self, metrics: dict[str, Any], final: bool = False) -> None:
        """Every worker saves its shard, rank 0 the trainer state; at the end rank 0 also
        publishes the export to `export_to`, outside the checkpoint, and records where. A
        checkpoint due for the benchmark curve (`curve_due`) is handed to Ray Train's
        validation task; before the last step it carries its own export (`curve_export/`)."""
        import ray.train

        curve = self.scores_curve and curve_due(self.cfg.train, self.step, final)
        with (
            staging("ckpt") as tmp,
            staging("export") as export_tmp,
        ):
            folder = Path(tmp)
            self.engine.save(folder, self.rank)
            torch.save(rng_state(), folder / rng_file(self.rank))
            built = self.export(Path(export_tmp)) if final else {}
            scored = self.export(folder / CURVE_EXPORT_DIR) if curve and not final else {}
            barrier()  # the others wait in `report` (no timeout) while rank 0 uploads
            if self.rank == 0:
                exported, sent = self.publish(Path(export_tmp), built)
                state = {**self._state(exported, sent), "curve_export": scored}
                (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2))
                with open(folder / METRICS_FILE, "w", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(m) + "\n" for m in self.history)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                validation=self._curve_task() if curve else False,
            )

    def _curve_task(self) -> Any:
        """What the curve's scoring task is told about this checkpoint: its step and the
        tokens seen so far (non-padding, all workers)."""
        from ray.train import ValidationTaskConfig

        tokens = sum(int(m.get("tokens", 0)) for m in self.history)
        return ValidationTaskConfig(fn_kwargs={"step": self.step, "tokens": tokens})

    def _state(self, exported: dict[str, str], export_bytes: int) -> dict[str, Any]:
        """The trainer state rank 0 writes into a checkpoint."""
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "resumed_from": self.resumed_from,
            "strategy": self.strategy.name,
            "engine": type(self.engine).__name__,
            "precision": self.precision,
            "world_size": self.world,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "data": self.data_stats,
            "export": exported,
            "export_uploaded_bytes": export_bytes,
            **self.resume_record,
        }

    def export(self, out: Path) -> dict[str, str]:
        """Hugging Face folder(s) of the trained model, written by rank 0 under the local `out`
        ({kind: relative path}); ZeRO-3 shards are gathered first (every rank takes part)."""
        names = self.strategy.export_parameter_names(self.engine.module)
        state_dict = self.engine.state_dict_for_export(names, self.rank)
        if self.rank != 0:
            return {}
        return self.strategy.export(self.engine.module, state_dict, out, self.tokenizer)

    def publish(self, out: Path, built: dict[str, str]) -> tuple[dict[str, str], int]:
        """Upload each built folder (with its `checksums.json`) to `<export_to>/<kind>`;
        return ({kind: location}, bytes sent)."""
        exported, sent = {}, 0
        for kind, rel in built.items():
            exported[kind] = storage.join(self.export_to, kind)
            sent += publish(out / rel, exported[kind])
            log.info("exported %s to %s", kind, exported[kind])
        return exported, sent

    def cleanup(self) -> None:
        self.engine = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point on every worker."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    remove_stale_staging()
    recipe = FinetuneRecipe(config)
    recipe.setup()
    recipe.train()
    recipe.cleanup()
