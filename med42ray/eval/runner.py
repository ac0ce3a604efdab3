"""The evaluation stage: benchmark items -> prompts -> engine actors -> scores -> tables.

:func:`run_eval` renders every item of ``cfg.eval.benchmarks`` (:mod:`prompts`), turns them into
requests (one per option for log-likelihood scoring, one per item for generation), and streams
the requests through a Ray Data pipeline whose ``map_batches`` stage is a pool of
``eval.num_actors`` actors, each holding one engine (:mod:`engines`). Every finished batch is
written at once as a Parquet part under ``OUT/parts/<run key>/`` (atomic rename, named by the
hash of its request keys), so a crash loses at most the batches in flight and a rerun scores
only the requests no part holds yet. The run key hashes the model, adapter, engine, scoring
mode and prompt formats: a changed prompt never reuses stale scores.

Outputs in ``OUT``: ``predictions.parquet`` and ``predictions.jsonl`` (one row per item: prompt
hash, option log-likelihoods or the generated text, prediction, acc_norm prediction, gold,
correct), ``summary.csv`` and ``summary.md`` (per benchmark, per subset, per group), ``eval.json``
(what the run did) and ``config.yaml`` (the resolved config).

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
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from med42ray.config import EvalConfig, ExperimentConfig, ModelConfig
from med42ray.eval.benchmarks import (
    BenchmarkError,
    BenchmarkItem,
    TaskSpec,
    cloze_task,
    load_benchmark,
    load_task,
)
from med42ray.eval.metrics import predict, summarise, to_markdown
from med42ray.eval.parsing import parse_answer
from med42ray.eval.prompts import Prompt, PromptFormat

log = logging.getLogger(__name__)

KEY_SEP = "|"
PART_COLUMNS = ["key", "task", "item_id", "option", "loglikelihood", "generation", "compute_s"]


@dataclass
class TaskRun:
    """One benchmark of the run: its spec, prompt format, items and rendered prompts."""

    spec: TaskSpec
    fmt: PromptFormat
    items: list[BenchmarkItem]
    prompts: list[Prompt]


# --------------------------------------------------------------------------- preparation
def fewshot_items(spec: TaskSpec, path: str | None, k: int) -> list[BenchmarkItem]:
    """The pool few-shot examples are drawn from: the task's `fewshot_split`.

    With a local test file `X.jsonl`, the pool is the sibling `X.<fewshot_split>.jsonl`.
    """
    if not k:
        return []
    if not spec.fewshot_split:
        raise BenchmarkError(f"{spec.task}: {k}-shot asked, but the task has no few-shot split")
    if path:
        local = Path(path)
        sibling = local.with_name(f"{local.stem}.{spec.fewshot_split}{local.suffix}")
        if not sibling.exists():
            raise BenchmarkError(f"{spec.task}: {k}-shot needs few-shot examples in {sibling}")
        return load_benchmark(spec.task, str(sibling))
    return load_benchmark(spec.task, split=spec.fewshot_split)


def prepare_tasks(cfg: ExperimentConfig, tokenizer: Any) -> list[TaskRun]:
    if not cfg.eval.benchmarks:
        raise BenchmarkError("eval.benchmarks is empty: nothing to evaluate")
    runs = []
    for bench in cfg.eval.benchmarks:
        spec = load_task(bench.name)
        if cfg.eval.prompt_format == "cloze":
            spec = cloze_task(spec)
        items = load_benchmark(bench.name, bench.path, bench.limit)
        fmt = PromptFormat(
            spec,
            num_fewshot=cfg.eval.num_fewshot,
            seed=cfg.eval.seed,
            use_chat_template=cfg.eval.use_chat_template,
            system_prompt=cfg.data.system_prompt if cfg.eval.use_chat_template else None,
            fewshot_items=fewshot_items(spec, bench.path, cfg.eval.num_fewshot),
            tokenizer=tokenizer,
        )
        runs.append(TaskRun(spec, fmt, items, [fmt.render(i) for i in items]))
    return runs


def build_requests(tasks: Sequence[TaskRun], scoring: str, tokenizer: Any) -> list[dict]:
    """One request per (item, option) for log-likelihood scoring, one per item to generate."""
    from med42ray.eval.engines import encode_pairs

    rows: list[dict] = []
    for run in tasks:
        task = run.spec.task
        if scoring == "generate":
            for item, prompt in zip(run.items, run.prompts, strict=True):
                rows.append(_request(task, item.id, -1, [], [], prompt.context))
            continue
        pairs, owners = [], []
        for item, prompt in zip(run.items, run.prompts, strict=True):
            for j, cont in enumerate(prompt.continuations):
                pairs.append((prompt.context, cont))
                owners.append((item.id, j))
        for (item_id, j), (ctx, cont) in zip(owners, encode_pairs(tokenizer, pairs), strict=True):
            rows.append(_request(task, item_id, j, ctx, cont, ""))
    return rows


def _request(task: str, item_id: str, option: int, ctx: list, cont: list, text: str) -> dict:
    key = KEY_SEP.join([task, item_id, str(option)])
    return {
        "key": key, "task": task, "item_id": item_id, "option": option,
        "ctx": [int(t) for t in ctx], "cont": [int(t) for t in cont], "text": text,
    }  # fmt: skip


def run_key(
    tasks: Sequence[TaskRun], model_path: str, adapter: str | None, cfg: ExperimentConfig
) -> str:
    blob = {
        "model": model_path,
        "adapter": str(Path(adapter).resolve()) if adapter and Path(adapter).exists() else adapter,
        "engine": cfg.eval.engine,
        "scoring": cfg.eval.scoring,
        "max_model_len": cfg.eval.max_model_len,
        "max_new_tokens": cfg.eval.max_new_tokens if cfg.eval.scoring == "generate" else None,
        "dtype": cfg.model.dtype,
        "prompts": {t.spec.task: t.fmt.version for t in tasks},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------- parts I/O
def write_part(parts_dir: Path, frame: pd.DataFrame) -> Path:
    """Write one finished batch atomically; the name hashes its request keys."""
    keys = "\n".join(sorted(frame["key"]))
    path = parts_dir / f"part-{hashlib.sha256(keys.encode()).hexdigest()[:20]}.parquet"
    tmp = parts_dir / f".{path.name}.{os.getpid()}.tmp"
    frame[PART_COLUMNS].to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_parts(parts_dir: Path) -> pd.DataFrame:
    """Every finished request of this run key (a key written twice keeps its first row)."""
    files = sorted(parts_dir.glob("part-*.parquet"))
    if not files:
        return pd.DataFrame(columns=PART_COLUMNS)
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return frame.drop_duplicates("key", keep="first").reset_index(drop=True)


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
        self.scoring = eval_cfg.scoring
        self.max_new_tokens = eval_cfg.max_new_tokens
        self.parts_dir = Path(parts_dir)
        self.fail_after_parts = fail_after_parts
        self.parts = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        n = len(batch["key"])
        if self.scoring == "generate":
            texts = self.engine.generate([str(t) for t in batch["text"]], self.max_new_tokens)
            lls = [math.nan] * n
        else:
            pairs = [
                ([int(t) for t in c], [int(t) for t in k])
                for c, k in zip(batch["ctx"], batch["cont"], strict=True)
            ]
            lls = self.engine.loglikelihood_tokens(pairs)
            texts = [""] * n
        seconds = time.perf_counter() - start
        frame = pd.DataFrame(
            {
                "key": [str(k) for k in batch["key"]],
                "task": [str(t) for t in batch["task"]],
                "item_id": [str(i) for i in batch["item_id"]],
                "option": [int(o) for o in batch["option"]],
                "loglikelihood": lls,
                "generation": texts,
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
    tasks: Sequence[TaskRun], results: pd.DataFrame, scoring: str, run: dict[str, Any]
) -> pd.DataFrame:
    by_key = results.set_index("key")
    rows = []
    for t in tasks:
        task = t.spec.task
        for item, prompt in zip(t.items, t.prompts, strict=True):
            options = range(len(prompt.choices)) if scoring != "generate" else [-1]
            keys = [KEY_SEP.join([task, item.id, str(j)]) for j in options]
            missing = [k for k in keys if k not in by_key.index]
            if missing:
                raise RuntimeError(f"{task}: item {item.id}: no result for {missing}")
            got = by_key.loc[keys]
            generation, parsed = None, None
            if scoring == "generate":
                generation = str(got["generation"].iloc[0])
                found = parse_answer(generation, item.labels, item.choices)
                parsed = found is not None
                pred = pred_norm = -1 if found is None else found
                lls: list[float] = []
            else:
                lls = [float(x) for x in got["loglikelihood"]]
                pred, pred_norm = predict(lls, prompt.choices)
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
                    "loglikelihoods": lls,
                    "generation": generation,
                    "parsed": parsed,
                    "pred": pred,
                    "pred_norm": pred_norm,
                    "gold": item.gold,
                    "correct": pred == item.gold,
                    "correct_norm": pred_norm == item.gold,
                    "compute_s": float(got["compute_s"].sum()),
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- entry point
def run_eval(
    cfg: ExperimentConfig,
    out: Path,
    model: str | None = None,
    adapter: str | None = None,
    label: str | None = None,
    *,
    _fail_after_parts: int | None = None,
) -> pd.DataFrame:
    """Score a model on ``cfg.eval.benchmarks``; write predictions and the summary into `out`.

    `model` is a folder or hub id (default: the config's model, the tiny one built on demand);
    `adapter` a PEFT LoRA folder served on top of it, unmerged; `label` names the model in the
    tables (default: the model id, plus the adapter's folder name). A rerun into the same
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
    scoring = cfg.eval.scoring
    requests = build_requests(tasks, scoring, tokenizer)

    key = run_key(tasks, model_path, adapter, cfg)
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
    run = {"model": label or model_id, "engine": cfg.eval.engine, "scoring": scoring}
    predictions = item_predictions(tasks, read_parts(parts_dir), scoring, run)
    predictions.to_parquet(out / "predictions.parquet", index=False)
    predictions.to_json(out / "predictions.jsonl", orient="records", lines=True)
    summary = summarise(predictions, {**run, "wall_s": wall})
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(to_markdown(summary), encoding="utf-8")
    (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
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
    }
    (out / "eval.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return summary
