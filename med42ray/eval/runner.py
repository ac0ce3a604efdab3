"""The evaluation stage: benchmark items -> prompts -> engine actors -> scores -> tables.

:func:`run_eval` renders every item of ``cfg.eval.benchmarks`` (:mod:`~med42ray.eval.prompts`),
asks the run's :class:`~med42ray.eval.scoring.Scoring` (``eval.scoring``) for its requests, and
streams them through a Ray Data pipeline whose ``map_batches`` stage is a pool of
``eval.num_actors`` :class:`ScoringActor` s, each holding one inference engine
(:mod:`~med42ray.eval.engines`) and scoring its batches the way the scoring mode says. Every
finished batch is written at once as a Parquet part under ``OUT/parts/<run key>/`` (atomically,
named by the hash of its request keys), so a crash loses at most the batches in flight and a
rerun scores only the requests no part holds yet. The run key hashes the weights (a local
folder by its content, not its path: retrained weights in the same folder are scored anew), the
engine, the scoring mode (and its settings), the prompt formats and the benchmarks' content
hashes: a changed prompt or a corrected benchmark file never reuses stale scores.
The scoring mode then reads each item's prediction from its parts; :mod:`~med42ray.eval.metrics`
makes the summary.

Outputs in ``OUT`` (each written atomically): ``predictions.parquet`` and ``predictions.jsonl``
(one row per item: prompt hash, option log-likelihoods or the generated text, prediction,
acc_norm prediction, gold, correct, ``clean``: no overlap with the training data, from the
data stage's ``overlap.json``), ``summary.csv`` and ``summary.md`` (per benchmark, per
subset, per group; ``n_clean`` / ``acc_clean`` on the clean items), ``eval.json`` (what
the run did) and ``config.yaml`` (the resolved config).

Why the vLLM path also runs in our actor pool rather than through ``ray.data.llm``'s
``build_processor``: lm-eval's scoring needs the exact ``context + continuation`` token ids
(split as ``_encode_pair`` splits them) and the per-option sums of their prompt logprobs.
The processor could take those ids (``tokenized_prompt``) and return ``prompt_logprobs``, but it
ships one full logprob dict per prompt token through the object store and back (the whole
context, for a handful of scored tokens) and serves LoRA adapters by name from a remote path
(``dynamic_lora_loading_path``), not a local PEFT folder. Our actor holds a ``vllm.LLM`` built by
the same factory the tests exercise, sums the scored tokens inside the actor, and writes the
part the resume logic needs; the Transformers engine runs in the very same pool.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from med42ray.benchmarks import (
    BenchmarkError,
    BenchmarkItem,
    TaskSpec,
    cloze_task,
    load_benchmark,
    load_benchmark_with_provenance,
    load_task,
)
from med42ray.config import EvalConfig, ExperimentConfig, ModelConfig
from med42ray.data.overlap import read_overlap
from med42ray.eval.metrics import summarise, to_markdown
from med42ray.eval.prompts import PromptFormat
from med42ray.eval.scoring import Scoring, TaskRun, build_scoring
from med42ray.stages import atomic_write

log = logging.getLogger(__name__)

PART_COLUMNS = ["key", "task", "item_id", "option", "loglikelihood", "generation", "compute_s"]


# --------------------------------------------------------------------------- preparation
def fewshot_items(
    spec: TaskSpec, path: str | None, k: int, mirror: str | None = None
) -> list[BenchmarkItem]:
    """The pool few-shot examples are drawn from: the task's `fewshot_split`.

    With a local release folder (MMLU's `data/`), the split is read from the same folder; with a
    local test file `X.jsonl`, the pool is the sibling `X.<fewshot_split>.jsonl`.
    """
    if not k:
        return []
    if not spec.fewshot_split:
        raise BenchmarkError(f"{spec.task}: {k}-shot asked, but the task has no few-shot split")
    if path and Path(path).is_dir():
        return load_benchmark(spec.task, path, split=spec.fewshot_split)
    if path:
        local = Path(path)
        sibling = local.with_name(f"{local.stem}.{spec.fewshot_split}{local.suffix}")
        if not sibling.exists():
            raise BenchmarkError(f"{spec.task}: {k}-shot needs few-shot examples in {sibling}")
        return load_benchmark(spec.task, str(sibling))
    return load_benchmark(spec.task, split=spec.fewshot_split, mirror=mirror)


def prepare_tasks(cfg: ExperimentConfig, tokenizer: Any) -> list[TaskRun]:
    """Every benchmark of ``cfg.eval.benchmarks``: its spec, items and rendered prompts."""
    if not cfg.eval.benchmarks:
        raise BenchmarkError("eval.benchmarks is empty: nothing to evaluate")
    mirror = cfg.resources.hub_mirror
    runs = []
    for bench in cfg.eval.benchmarks:
        spec = load_task(bench.name)
        if cfg.eval.prompt_format == "cloze":
            spec = cloze_task(spec)
        loaded = load_benchmark_with_provenance(bench.name, bench.path, mirror=mirror)
        items = loaded.items[: bench.limit] if bench.limit else loaded.items
        fmt = PromptFormat(
            spec,
            num_fewshot=cfg.eval.num_fewshot,
            seed=cfg.eval.seed,
            use_chat_template=cfg.eval.use_chat_template,
            system_prompt=cfg.data.system_prompt if cfg.eval.use_chat_template else None,
            fewshot_items=fewshot_items(spec, bench.path, cfg.eval.num_fewshot, mirror),
            tokenizer=tokenizer,
        )
        provenance = {**loaded.provenance.to_dict(), "scored": len(items)}
        runs.append(TaskRun(spec, fmt, items, [fmt.render(i) for i in items], provenance))
    return runs


def build_requests(tasks: Sequence[TaskRun], scoring: Scoring, tokenizer: Any) -> list[dict]:
    """The requests of every task run, as the scoring mode asks them."""
    return [row for run in tasks for row in scoring.requests(run, tokenizer)]


def run_key(
    tasks: Sequence[TaskRun],
    scoring: Scoring,
    model_path: str,
    adapter: str | None,
    cfg: ExperimentConfig,
) -> str:
    """Hash of everything a stored score depends on: the name of the run's parts folder."""
    from med42ray.models import weights_identity

    blob = {
        "model": weights_identity(model_path, cfg.model.revision),
        "adapter": weights_identity(adapter) if adapter else None,
        "engine": cfg.eval.engine,
        **scoring.key_settings(),
        "max_model_len": cfg.eval.max_model_len,
        "dtype": cfg.model.dtype,
        "prompts": {t.spec.task: t.fmt.version for t in tasks},
        "benchmarks": {t.spec.task: t.provenance.get("sha256") for t in tasks},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------- parts I/O
def write_part(parts_dir: Path, frame: pd.DataFrame) -> Path:
    """Write one finished batch atomically; the name hashes its request keys."""
    keys = "\n".join(sorted(frame["key"]))
    path = parts_dir / f"part-{hashlib.sha256(keys.encode()).hexdigest()[:20]}.parquet"
    return atomic_write(path, _parquet_bytes(frame[PART_COLUMNS]))


def read_parts(parts_dir: Path) -> pd.DataFrame:
    """Every finished request of this run key (a key written twice keeps its first row)."""
    files = sorted(parts_dir.glob("part-*.parquet"))
    if not files:
        return pd.DataFrame(columns=PART_COLUMNS)
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return frame.drop_duplicates("key", keep="first").reset_index(drop=True)


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


# ------------------------------------------------------------------------------ the actors
class ScoringActor:
    """One engine per actor; each batch is scored, written as a part, and reported."""

    def __init__(
        self,
        engine: str,
        model_path: str,
        model_cfg: ModelConfig,
        eval_cfg: EvalConfig,
        adapter: str | None,
        parts_dir: str,
        fail_after_parts: int | None = None,
    ) -> None:
        from med42ray.eval.engines import make_engine

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import ray

        # a distinct, stable seed offset per engine actor (greedy scoring does not use it)
        actor_id = ray.get_runtime_context().get_actor_id() or "0"
        index = int(actor_id[:8], 16) % 10_000
        self.engine = make_engine(engine, model_path, model_cfg, eval_cfg, adapter, index=index)
        self.scoring = build_scoring(eval_cfg)
        self.parts_dir = Path(parts_dir)
        self.fail_after_parts = fail_after_parts
        self.parts = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        n = len(batch["key"])
        scores = self.scoring.score(self.engine, batch)
        seconds = time.perf_counter() - start
        frame = pd.DataFrame(
            {
                "key": [str(k) for k in batch["key"]],
                "task": [str(t) for t in batch["task"]],
                "item_id": [str(i) for i in batch["item_id"]],
                "option": [int(o) for o in batch["option"]],
                "loglikelihood": scores["loglikelihood"],
                "generation": scores["generation"],
                "compute_s": [seconds / n] * n,
            }
        )
        write_part(self.parts_dir, frame)
        self.parts += 1
        if self.fail_after_parts is not None and self.parts >= self.fail_after_parts:
            raise RuntimeError(f"simulated crash after {self.parts} part(s)")
        return {"key": frame["key"].to_numpy(), "compute_s": frame["compute_s"].to_numpy()}


def score_requests(
    requests: list[dict],
    cfg: ExperimentConfig,
    model_path: str,
    adapter: str | None,
    parts_dir: Path,
    fail_after_parts: int | None = None,
) -> int:
    """Run the pending requests through the actor pool; return how many were scored."""
    import ray
    import ray.data

    from med42ray.cluster import init_ray

    init_ray(cfg.resources.ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ev = cfg.eval
    n_items = len({(r["task"], r["item_id"]) for r in requests})
    per_batch = max(1, math.ceil(len(requests) / n_items) * ev.batch_size)
    blocks = max(1, math.ceil(len(requests) / per_batch))
    ds = ray.data.from_items(requests, override_num_blocks=blocks)
    # one engine per actor; a GPU share per actor when asked (tensor-parallel vLLM engines
    # place their extra shards on Ray workers of their own: `distributed_executor_backend`)
    ds = ds.map_batches(
        ScoringActor,
        fn_constructor_kwargs={
            "engine": ev.engine,
            "model_path": model_path,
            "model_cfg": cfg.model,
            "eval_cfg": ev,
            "adapter": adapter,
            "parts_dir": str(parts_dir),
            "fail_after_parts": fail_after_parts,
        },
        batch_size=per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=ev.num_actors),
        num_cpus=1,
        num_gpus=ev.gpus_per_actor,
    )
    scored = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        scored += len(batch["key"])
    return scored


# ----------------------------------------------------------------------------- aggregation
def item_predictions(
    tasks: Sequence[TaskRun], results: pd.DataFrame, scoring: Scoring, run: dict[str, Any]
) -> pd.DataFrame:
    """One row per item: `run`'s columns, the prompt, the scoring mode's prediction, gold."""
    by_key = results.set_index("key")
    rows = []
    for t in tasks:
        task = t.spec.task
        for item, prompt in zip(t.items, t.prompts, strict=True):
            keys = scoring.item_keys(task, item, prompt)
            missing = [k for k in keys if k not in by_key.index]
            if missing:
                raise RuntimeError(f"{task}: item {item.id}: no result for {missing}")
            got = by_key.loc[keys]
            p = scoring.predict_item(item, prompt, got)
            rows.append(
                {
                    **run,
                    "benchmark": task,
                    "item_id": item.id,
                    "subset": item.subset,
                    "prompt_format": t.fmt.name,
                    "prompt_version": t.fmt.version,
                    "prompt_hash": prompt.hash,
                    "choices": list(prompt.choices),
                    "loglikelihoods": p.loglikelihoods,
                    "generation": p.generation,
                    "parsed": p.parsed,
                    "pred": p.pred,
                    "pred_norm": p.pred_norm,
                    "gold": item.gold,
                    "correct": p.pred == item.gold,
                    "correct_norm": p.pred_norm == item.gold,
                    "compute_s": float(got["compute_s"].sum()),
                }
            )
    return pd.DataFrame(rows)


def clean_items(predictions: pd.DataFrame, touched: dict[str, set[str]] | None) -> pd.Series:
    """Per prediction, True when its item is not among the benchmark's `touched` ids (all True
    without an overlap record)."""
    if touched is None or not len(predictions):
        return pd.Series(True, index=predictions.index, dtype=bool)
    clean = [
        str(item) not in touched.get(str(bench), ())
        for bench, item in zip(predictions["benchmark"], predictions["item_id"], strict=True)
    ]
    return pd.Series(clean, index=predictions.index, dtype=bool)


def write_outputs(
    out: Path,
    cfg: ExperimentConfig,
    predictions: pd.DataFrame,
    summary: pd.DataFrame,
    record: dict[str, Any],
) -> None:
    """The run's tables, its resolved config and `eval.json`, each file written atomically."""
    atomic_write(out / "predictions.parquet", _parquet_bytes(predictions))
    atomic_write(out / "predictions.jsonl", predictions.to_json(orient="records", lines=True) or "")
    atomic_write(out / "summary.csv", summary.to_csv(index=False) or "")
    atomic_write(out / "summary.md", to_markdown(summary))
    atomic_write(out / "config.yaml", cfg.to_yaml())
    atomic_write(out / "eval.json", json.dumps(record, indent=2))


# ----------------------------------------------------------------------------- entry point
def run_eval(
    cfg: ExperimentConfig,
    out: Path,
    model: str | None = None,
    adapter: str | None = None,
    label: str | None = None,
    *,
    overlap: Path | None = None,
    _fail_after_parts: int | None = None,
) -> pd.DataFrame:
    """Score a model on ``cfg.eval.benchmarks``; write predictions and the summary into `out`.

    `model` is a folder or hub id (default: the config's model, the tiny one built on demand);
    `adapter` a PEFT LoRA folder served on top of it, unmerged; `label` names the model in the
    tables (default: the model id, plus the adapter's folder name); `overlap` the data stage's
    `overlap.json`: its items are not `clean` (every item is without it). A rerun into the same
    `out` scores only what an interrupted run left undone. Returns the summary table.
    (`_fail_after_parts` makes each actor raise after writing that many parts: the crash
    the resume tests simulate.)
    """
    from med42ray.models import load_tokenizer, resolve_model_path

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = model or resolve_model_path(cfg.model)
    model_id = model or cfg.model.name_or_path
    if adapter:
        model_id = f"{model_id}+{Path(adapter).name}"
    tokenizer = load_tokenizer(cfg.model, model_path if model else None)
    tasks = prepare_tasks(cfg, tokenizer)
    scoring = build_scoring(cfg.eval)
    requests = build_requests(tasks, scoring, tokenizer)

    key = run_key(tasks, scoring, model_path, adapter, cfg)
    parts_dir = out / "parts" / key
    parts_dir.mkdir(parents=True, exist_ok=True)
    done = set(read_parts(parts_dir)["key"])
    pending = [r for r in requests if r["key"] not in done]
    log.info(
        "eval %s: %d requests, %d already done", key, len(requests), len(requests) - len(pending)
    )
    scored = 0
    if pending:
        scored = score_requests(pending, cfg, model_path, adapter, parts_dir, _fail_after_parts)

    wall = time.perf_counter() - start
    run = {"model": label or model_id, "engine": cfg.eval.engine, "scoring": scoring.name}
    predictions = item_predictions(tasks, read_parts(parts_dir), scoring, run)
    predictions["clean"] = clean_items(predictions, read_overlap(overlap))
    summary = summarise(predictions, {**run, "wall_s": wall})
    record = {
        "run_key": key,
        "model_path": model_path,
        "adapter": adapter,
        "requests": len(requests),
        "resumed": len(requests) - len(pending),
        "scored": scored,
        "items": len(predictions),
        "wall_s": wall,
        "prompt_formats": {t.spec.task: [t.fmt.name, t.fmt.version] for t in tasks},
        "benchmarks": {t.spec.task: t.provenance for t in tasks},
    }
    write_outputs(out, cfg, predictions, summary, record)
    return summary
