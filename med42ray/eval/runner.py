"""The evaluation stage: benchmark items -> prompts -> engine actors -> scores -> tables.

:func:`run_eval` scores every protocol of ``eval`` (``eval.resolved_protocols()``: letter,
cloze, chat-template, generative...) in one pass: per protocol it renders every item of
``cfg.eval.benchmarks`` (:mod:`~med42ray.eval.prompts`) and asks the protocol's
:class:`~med42ray.eval.scoring.Scoring` for its requests; all of them stream through one Ray Data
pipeline whose ``map_batches`` stage is a pool of ``eval.num_actors`` :class:`ScoringActor` s,
each holding one inference engine (:mod:`~med42ray.eval.engines`, the weights loaded once) and
scoring each request the way its protocol's scoring mode says (with tensor parallelism, plain
Ray actors in placement groups of their own: :mod:`~med42ray.eval.placement`). The cluster
shares nothing but object storage: the model and adapter are locations (a folder, a hub id, an
``s3://`` URI) that every actor resolves on its own node, and the driver fetches only the
tokenizer's files to render the prompts. Every finished batch is written at once as a Parquet
part under ``<parts>/<run key>/``, one run key per protocol (default ``OUT/parts``; a folder or
an object-store prefix; one atomic write each, named by the hash of its request keys), so a
crash loses at most the batches in flight and a rerun, on any node, scores only the requests
no part holds yet. The run key hashes the weights (a local folder by
its content, not its path: retrained weights in the same folder are scored anew; an export in
object storage by its ``checksums.json``), the engine, the scoring mode (and its settings), the
prompt formats and the benchmarks' content hashes: a changed prompt or a corrected benchmark
file never reuses stale scores, and adding a protocol rescores no other. Each scoring mode then
reads its items' predictions from its parts; :mod:`~med42ray.eval.metrics` makes the summary
and the agreement between protocols.

Outputs in ``OUT`` (each written atomically): ``predictions.parquet`` and ``predictions.jsonl``
(one row per item: prompt hash, option log-likelihoods or the generated text, prediction,
acc_norm prediction, gold, correct, ``clean``: no overlap with the training data, from the
data stage's ``overlap.json``; one row per protocol and item), ``summary.csv`` and
``summary.md`` (per protocol, benchmark, subset and group, groups both unweighted and
size-weighted; ``n_clean`` / ``acc_clean`` on the clean items), ``agreement.csv`` (per
benchmark and pair of protocols, the share of items with the same prediction), ``eval.json``
(what the run did: the model's location, each protocol's run key, parts, requests and compute
seconds, the bytes the driver and the actors moved, the placement) and ``config.yaml`` (the
resolved config).

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
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from med42ray import console
from med42ray.benchmarks import (
    BenchmarkError,
    BenchmarkItem,
    TaskSpec,
    load_benchmark,
    load_benchmark_with_provenance,
    load_task,
)
from med42ray.config import EvalConfig, ExperimentConfig, ModelConfig, ProtocolConfig
from med42ray.console import Progress
from med42ray.data.overlap import read_overlap
from med42ray.eval.metrics import agreement, summarise, to_markdown
from med42ray.eval.prompts import PromptFormat, format_task
from med42ray.eval.scoring import Scoring, TaskRun, build_scoring
from med42ray.stages import atomic_write

if TYPE_CHECKING:
    from med42ray.eval.placement import Placement

log = logging.getLogger(__name__)

PART_COLUMNS = ["key", "task", "item_id", "option", "loglikelihood", "generation", "compute_s"]


# --------------------------------------------------------------------------- preparation
def fewshot_items(
    spec: TaskSpec, path: str | None, k: int, mirror: str | None = None
) -> list[BenchmarkItem]:
    """The pool few-shot examples are drawn from: the task's `fewshot_split`, whole and in its
    order (lm-eval's sampler picks by position: another order or size, other shots).

    With a local release folder (MMLU's `data/`), the split is read from the same folder; with a
    local test file `X.jsonl`, the pool is the sibling `X.<fewshot_split>.jsonl`, or `X.jsonl`
    itself when the few-shot split is the test split (each item then left out of its shots).
    """
    if not k:
        return []
    if not spec.fewshot_split:
        raise BenchmarkError(f"{spec.task}: {k}-shot asked, but the task has no few-shot split")
    if spec.fewshot_split == spec.test_split:
        return load_benchmark(spec.task, path, mirror=mirror)
    if path and Path(path).is_dir():
        return load_benchmark(spec.task, path, split=spec.fewshot_split)
    if path:
        local = Path(path)
        sibling = local.with_name(f"{local.stem}.{spec.fewshot_split}{local.suffix}")
        if not sibling.exists():
            raise BenchmarkError(f"{spec.task}: {k}-shot needs few-shot examples in {sibling}")
        return load_benchmark(spec.task, str(sibling))
    return load_benchmark(spec.task, split=spec.fewshot_split, mirror=mirror)


def prepare_tasks(
    cfg: ExperimentConfig, tokenizer: Any, protocol: ProtocolConfig | None = None
) -> list[TaskRun]:
    """Every benchmark of ``cfg.eval.benchmarks``: its spec, items and prompts as `protocol`
    renders them (default: the first of ``eval.resolved_protocols()``)."""
    protocol = protocol or cfg.eval.resolved_protocols()[0]
    if not cfg.eval.benchmarks:
        raise BenchmarkError("eval.benchmarks is empty: nothing to evaluate")
    mirror = cfg.resources.hub_mirror
    runs = []
    for bench in cfg.eval.benchmarks:
        spec = format_task(load_task(bench.name), protocol.prompt_format)
        loaded = load_benchmark_with_provenance(bench.name, bench.path, mirror=mirror)
        limit = bench.limit or cfg.eval.limit
        items = loaded.items[:limit] if limit else loaded.items
        fmt = PromptFormat(
            spec,
            num_fewshot=cfg.eval.num_fewshot,
            seed=cfg.eval.seed,
            use_chat_template=protocol.chat_template,
            system_prompt=cfg.data.system_prompt if protocol.chat_template else None,
            fewshot_items=fewshot_items(spec, bench.path, cfg.eval.num_fewshot, mirror),
            tokenizer=tokenizer,
        )
        provenance = {**loaded.provenance.to_dict(), "scored": len(items)}
        runs.append(TaskRun(spec, fmt, items, [fmt.render(i) for i in items], provenance))
    return runs


def build_requests(tasks: Sequence[TaskRun], scoring: Scoring, tokenizer: Any) -> list[dict]:
    """The requests of every task run, as the scoring mode asks them."""
    return [row for run in tasks for row in scoring.requests(run, tokenizer)]


def model_config_for(cfg: ExperimentConfig, model: str | None) -> ModelConfig:
    """The config's model section naming `model` (a location), or as it is without one.

    A local folder becomes absolute, so that actors load it whatever their working directory."""
    from med42ray import storage
    from med42ray.models import local_model_dir

    if not model:
        return cfg.model
    local = None if storage.is_uri(model) else local_model_dir(model)
    return cfg.model.model_copy(update={"name_or_path": str(local or model)})


def driver_tokenizer(model_cfg: ModelConfig, mirror: str | None) -> Any:
    """The tokenizer that renders the prompts: from object storage only its files are fetched."""
    from med42ray.models import load_tokenizer, resolve_tokenizer_path

    path = resolve_tokenizer_path(model_cfg, mirror)
    # a folder is read as it is; a hub id (no folder) at the config's revision
    return load_tokenizer(model_cfg, path if Path(path).is_dir() else None)


def run_key(
    tasks: Sequence[TaskRun],
    scoring: Scoring,
    model_path: str,
    adapter: str | None,
    cfg: ExperimentConfig,
) -> str:
    """Hash of everything a stored score depends on: the name of the run's parts folder.

    `model_path` and `adapter` are locations (`models.model_source`): nothing is downloaded
    to key them.
    """
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


@dataclass
class ProtocolRun:
    """One protocol of an evaluation: its prompts, scoring mode and requests, and its parts
    location, ``<parts>/<run key>``: each protocol's own, keyed by what its scores depend on,
    so adding a protocol never rescores another."""

    protocol: ProtocolConfig
    scoring: Scoring
    tasks: list[TaskRun]
    requests: list[dict[str, Any]]
    key: str
    parts: str
    cache: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.protocol.label

    def results(self) -> pd.DataFrame:
        """Every finished request of this protocol (parts already read are not read again)."""
        return read_parts(self.parts, self.cache)


def prepare_protocols(
    cfg: ExperimentConfig, tokenizer: Any, source: str, adapter: str | None, parts: str
) -> list[ProtocolRun]:
    """Every protocol of ``eval.resolved_protocols()``, its requests tagged with its name (the
    actors route them by it). `source`/`adapter` are the weights' locations (for the key)."""
    from med42ray import storage

    runs = []
    for protocol in cfg.eval.resolved_protocols():
        tasks = prepare_tasks(cfg, tokenizer, protocol)
        scoring = build_scoring(cfg.eval, protocol)
        requests = [
            {**row, "protocol": protocol.label} for row in build_requests(tasks, scoring, tokenizer)
        ]
        key = run_key(tasks, scoring, source, adapter, cfg)
        runs.append(ProtocolRun(protocol, scoring, tasks, requests, key, storage.join(parts, key)))
    return runs


def adopt_parts(run: ProtocolRun, earlier: Sequence[str]) -> int:
    """Copy into `run`'s parts the parts under the same run key in `earlier` parts locations
    (an earlier evaluation of the same weights with other protocols): what they scored is not
    scored again, and this evaluation's parts stay complete on their own. Returns the count."""
    from med42ray import storage

    have = set(storage.list_files(run.parts))
    copied = 0
    for root in earlier:
        source = storage.join(root, run.key)
        if source == run.parts:
            continue
        for name in sorted(storage.list_files(source)):
            if fnmatch(name, "part-*.parquet") and name not in have:
                data = storage.read_bytes(storage.join(source, name))
                storage.write_bytes(storage.join(run.parts, name), data)
                have.add(name)
                copied += 1
    return copied


# ------------------------------------------------------------------------------- parts I/O
def write_part(parts: str | Path, frame: pd.DataFrame) -> str:
    """Write one finished batch whole into the `parts` location (a folder or an object-store
    prefix: a temp file renamed, or one PUT); the name hashes its request keys."""
    from med42ray import storage

    keys = "\n".join(sorted(frame["key"]))
    name = f"part-{hashlib.sha256(keys.encode()).hexdigest()[:20]}.parquet"
    return storage.write_bytes(storage.join(parts, name), _parquet_bytes(frame[PART_COLUMNS]))


def read_parts(parts: str | Path, cache: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Every finished request under the `parts` location (a key written twice keeps its first
    row). Parts already in `cache` (name -> frame; filled here) are not read again."""
    from med42ray import storage

    cache = {} if cache is None else cache
    names = sorted(n for n in storage.list_files(parts) if fnmatch(n, "part-*.parquet"))
    for name in names:
        if name not in cache:
            data = storage.read_bytes(storage.join(parts, name))
            cache[name] = pd.read_parquet(io.BytesIO(data))
    if not names:
        return pd.DataFrame(columns=PART_COLUMNS)
    frame = pd.concat([cache[n] for n in names], ignore_index=True)
    return frame.drop_duplicates("key", keep="first").reset_index(drop=True)


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


# ------------------------------------------------------------------------------ the actors
class ScoringActor:
    """One engine per actor, scoring every protocol: each batch is split by its rows'
    `protocol`, each share scored by that protocol's mode and written as a part into that
    protocol's `parts` location, and reported. The weights load once for all protocols.

    The actor resolves the weights on its own node: `model_cfg.name_or_path` (a hub id, a
    folder, the tiny model, or an object-store URI copied into this node's cache once) through
    `resolve_model_path`, the adapter (a folder or URI) through `storage.local_copy`. It writes
    its parts into the `parts` location; each reply carries its transfer counts.
    """

    def __init__(
        self,
        engine: str,
        model_cfg: ModelConfig,
        mirror: str | None,
        eval_cfg: EvalConfig,
        adapter: str | None,
        parts: dict[str, str],
        fail_after_parts: int | None = None,
    ) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import ray

        from med42ray import storage
        from med42ray.eval.engines import make_engine
        from med42ray.models import resolve_model_path

        self.start = storage.transfers()
        # a distinct, stable seed offset per engine actor (greedy scoring does not use it)
        self.actor_id = ray.get_runtime_context().get_actor_id() or "0"
        index = int(self.actor_id[:8], 16) % 10_000
        model_path = resolve_model_path(model_cfg, mirror)
        adapter = str(storage.local_copy(adapter)) if adapter else None
        self.engine = make_engine(engine, model_path, model_cfg, eval_cfg, adapter, index=index)
        self.scorings = {p.label: build_scoring(eval_cfg, p) for p in eval_cfg.resolved_protocols()}
        self.parts = {name: str(location) for name, location in parts.items()}
        self.fail_after_parts = fail_after_parts
        self.written = 0

    def placement(self) -> dict[str, Any]:
        """Where this actor runs: its node and its placement group (what vLLM's executor uses)."""
        import ray

        group = ray.util.get_current_placement_group()
        return {
            "actor": self.actor_id,
            "node": ray.get_runtime_context().get_node_id(),
            "placement_group": group.id.hex() if group else None,
        }

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from med42ray import storage

        frames = []
        for protocol in dict.fromkeys(str(p) for p in batch["protocol"]):
            rows = [i for i, p in enumerate(batch["protocol"]) if str(p) == protocol]
            share = {k: [v[i] for i in rows] for k, v in batch.items()}
            frames.append(self._score_part(protocol, share))
        frame = pd.concat(frames, ignore_index=True)
        n = len(frame)
        now = storage.transfers()
        return {
            "key": frame["key"].to_numpy(),
            "compute_s": frame["compute_s"].to_numpy(),
            "actor": np.full(n, self.actor_id),
            **{k: np.full(n, now[k] - self.start[k]) for k in TRANSFER_KEYS},
        }

    def _score_part(self, protocol: str, batch: dict[str, list[Any]]) -> pd.DataFrame:
        """Score one protocol's requests of a batch and write them as one part."""
        start = time.perf_counter()
        n = len(batch["key"])
        scores = self.scorings[protocol].score(self.engine, batch)
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
        write_part(self.parts[protocol], frame)
        self.written += 1
        if self.fail_after_parts is not None and self.written >= self.fail_after_parts:
            raise RuntimeError(f"simulated crash after {self.written} part(s)")
        return frame

    def score_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """`__call__` under a plain name (the actor-pool path calls it as a method)."""
        return self(batch)


TRANSFER_KEYS = ("downloaded_bytes", "uploaded_bytes", "downloaded_files", "uploaded_files")


def _batches(requests: list[dict], ev: EvalConfig) -> tuple[int, int]:
    """(requests per batch: `eval.batch_size` items' worth, number of blocks; an item counts
    once per protocol)."""
    n_items = len({(r.get("protocol"), r["task"], r["item_id"]) for r in requests})
    per_batch = max(1, math.ceil(len(requests) / n_items) * ev.batch_size)
    return per_batch, max(1, math.ceil(len(requests) / per_batch))


def score_requests(
    requests: list[dict],
    cfg: ExperimentConfig,
    model_cfg: ModelConfig,
    adapter: str | None,
    parts: dict[str, str],
    fail_after_parts: int | None = None,
    in_process: bool = False,
) -> dict[str, Any]:
    """Run the pending requests of every protocol through one set of engine actors (placed by
    `actor_placement`), or `in_process` through one engine here; `parts` maps each protocol
    to where its parts go.

    Returns {"scored": requests scored, "actors": their transfers, "placement": ...}.
    """
    from med42ray.cluster import init_ray
    from med42ray.eval.placement import actor_placement

    init_ray(cfg.resources.ray_address)
    placement = actor_placement(cfg.eval, cfg.resources)
    kwargs = {
        "engine": cfg.eval.engine,
        "model_cfg": model_cfg,
        "mirror": cfg.resources.hub_mirror,
        "eval_cfg": cfg.eval,
        "adapter": adapter,
        "parts": {name: str(location) for name, location in parts.items()},
        "fail_after_parts": fail_after_parts,
    }
    shown = console.current()
    progress = shown.progress("scoring", len(requests), "requests")
    try:
        if in_process:
            outputs = _score_here(requests, cfg.eval, kwargs, progress)
            where = [{"actor": "in process"}]
        elif placement.bundles:
            outputs, where = _score_in_groups(requests, cfg.eval, placement, kwargs, progress)
        else:
            outputs, where = _score_with_data(requests, cfg.eval, placement, kwargs, progress), []
    finally:
        progress.close()
    return {
        "scored": sum(len(o["key"]) for o in outputs),
        "actors": actor_transfers(outputs),
        "placement": {**placement.to_dict(), "actors": where},
    }


def _score_here(
    requests: list[dict], ev: EvalConfig, kwargs: dict[str, Any], progress: Progress
) -> list[dict[str, Any]]:
    """One engine in this process, batch after batch: a task that already holds the
    evaluation's resources (a checkpoint's curve point, `med42ray.checkpoint_eval`) scores a
    few hundred items faster than an actor pool starts."""
    per_batch, _ = _batches(requests, ev)
    scorer = ScoringActor(**kwargs)
    try:
        return [
            _counted(scorer(_columns(requests[i : i + per_batch])), progress)
            for i in range(0, len(requests), per_batch)
        ]
    finally:
        scorer.engine.close()


def _counted(output: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """`output` (a scored batch), its requests counted on `progress`."""
    progress.advance(len(output["key"]))
    return output


def _score_with_data(
    requests: list[dict],
    ev: EvalConfig,
    placement: Placement,
    kwargs: dict[str, Any],
    progress: Progress,
) -> list[dict[str, Any]]:
    """One engine per actor of a Ray Data actor pool (`eval.num_actors`), one shard each."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    per_batch, blocks = _batches(requests, ev)
    ds = ray.data.from_items(requests, override_num_blocks=blocks)
    ds = ds.map_batches(
        ScoringActor,
        fn_constructor_kwargs=kwargs,
        batch_size=per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=ev.num_actors),
        num_cpus=placement.num_cpus,
        num_gpus=placement.num_gpus,
        resources=placement.resources or None,
    )
    return [_counted(b, progress) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]


def _score_in_groups(
    requests: list[dict],
    ev: EvalConfig,
    placement: Placement,
    kwargs: dict[str, Any],
    progress: Progress,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tensor parallelism: `eval.num_actors` plain Ray actors, each in bundle 0 of a placement
    group of its own (`create_groups`), two batches in flight per actor.

    Not Ray Data's actor pool: in Ray 2.60 the only way to give each of its actors a placement
    group of its own is `ray_remote_args_fn` (what `ray.data.llm` does), deprecated there and
    due to be removed in Ray 2.64, and the groups it creates are never removed. Here the groups
    live exactly as long as the scoring, and are removed however it ends.
    """
    import ray
    from ray.util import remove_placement_group

    from med42ray.eval.placement import actor_options, create_groups

    per_batch, _ = _batches(requests, ev)
    queue = [_columns(requests[i : i + per_batch]) for i in range(0, len(requests), per_batch)]
    queue.reverse()
    groups = create_groups(placement, ev.num_actors)
    actors: list[Any] = []
    try:
        remote = ray.remote(ScoringActor)
        actors = [remote.options(**actor_options(placement, g)).remote(**kwargs) for g in groups]
        where = ray.get([a.placement.remote() for a in actors])
        free, pending, outputs = actors * 2, {}, []
        while queue or pending:
            while queue and free:
                actor = free.pop()
                pending[actor.score_batch.remote(queue.pop())] = actor
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            outputs.append(_counted(ray.get(ref), progress))
            free.append(pending.pop(ref))
        return outputs, where
    finally:
        for actor in actors:
            ray.kill(actor)
        for group in groups:
            remove_placement_group(group)


def _columns(rows: list[dict]) -> dict[str, list]:
    """Rows as one batch of columns (what Ray Data hands the actors)."""
    return {k: [r[k] for r in rows] for k in rows[0]}


def actor_transfers(outputs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """What the actors fetched and sent (each reply carries its actor's running totals)."""
    last: dict[str, dict[str, int]] = {}
    for out in outputs:
        for i, actor in enumerate(out["actor"]):
            prev = last.setdefault(str(actor), dict.fromkeys(TRANSFER_KEYS, 0))
            for k in TRANSFER_KEYS:  # running totals: the largest is the latest
                prev[k] = max(prev[k], int(out[k][i]))
    total = {k: sum(c[k] for c in last.values()) for k in TRANSFER_KEYS}
    return {**total, "actors": len(last)}


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
    atomic_write(out / "agreement.csv", agreement(predictions).to_csv(index=False) or "")
    atomic_write(out / "config.yaml", cfg.to_yaml())
    atomic_write(out / "eval.json", json.dumps(record, indent=2))


# ----------------------------------------------------------------------------- entry point
def pending_requests(runs: Sequence[ProtocolRun], earlier: Sequence[str]) -> list[dict[str, Any]]:
    """The requests no part holds yet, every protocol's, after adopting `earlier`'s parts."""
    pending = []
    for run in runs:
        adopted = adopt_parts(run, earlier)
        done = set(run.results()["key"])
        todo = [r for r in run.requests if r["key"] not in done]
        log.info(
            "eval %s (%s): %d requests, %d already done (%d parts adopted)",
            run.key, run.name, len(run.requests), len(run.requests) - len(todo), adopted,
        )  # fmt: skip
        pending += todo
    return pending


def all_predictions(runs: Sequence[ProtocolRun], info: dict[str, Any]) -> pd.DataFrame:
    """Every protocol's item predictions, one frame (columns `protocol` and `scoring`)."""
    frames = [
        item_predictions(
            r.tasks, r.results(), r.scoring, {**info, "protocol": r.name, "scoring": r.scoring.name}
        )
        for r in runs
    ]
    return pd.concat(frames, ignore_index=True)


def protocol_records(
    runs: Sequence[ProtocolRun], pending: Sequence[dict[str, Any]], predictions: pd.DataFrame
) -> dict[str, dict[str, Any]]:
    """Per protocol: its settings, run key, parts, requests, resumed, compute seconds, and the
    share of generated answers that named no option (`unparsed`; None when scored by
    log-likelihood)."""
    todo = pd.Series([r["protocol"] for r in pending], dtype=object).value_counts()
    compute = predictions.groupby("protocol")["compute_s"].sum()
    generated = predictions.dropna(subset=["parsed"])
    unparsed = (~generated["parsed"].astype(bool)).groupby(generated["protocol"]).mean().to_dict()
    return {
        r.name: {
            **r.protocol.model_dump(exclude={"name"}),
            "run_key": r.key,
            "parts": r.parts,
            "requests": len(r.requests),
            "resumed": len(r.requests) - int(todo.get(r.name, 0)),
            "compute_s": float(compute.get(r.name, 0.0)),
            "unparsed": unparsed.get(r.name),
        }
        for r in runs
    }


def run_eval(
    cfg: ExperimentConfig,
    out: Path,
    model: str | None = None,
    adapter: str | None = None,
    label: str | None = None,
    *,
    parts: str | None = None,
    earlier_parts: Sequence[str] = (),
    overlap: Path | None = None,
    in_process: bool = False,
    _fail_after_parts: int | None = None,
) -> pd.DataFrame:
    """Score a model on ``cfg.eval.benchmarks`` by every protocol of ``eval``; write the
    predictions, the summary and the protocols' agreement into `out`.

    `model` is a location: a folder, a hub id or an object-store URI (default: the config's
    model, the tiny one built on demand); `adapter` a PEFT LoRA folder or URI served on top of
    it, unmerged. Each actor fetches the weights on its own node; this process reads only the
    tokenizer's and config's files. One set of actors scores every protocol. `parts` is where
    the scored batches go (a folder or a URI; default `out/parts`), under each protocol's run
    key: a rerun, here or after a job restart on another node, scores only what no part holds
    yet; `earlier_parts` are other evaluations' parts locations whose parts under the same run
    keys are adopted (copied) first. `label` names the model in the tables (default: the model
    id, plus the adapter's name); `overlap` the data stage's `overlap.json`: its items are not
    `clean` (every item is without it); `in_process` scores with one engine in this process
    instead of actors (a task that holds the evaluation's resources). Returns the summary table.
    (`_fail_after_parts` makes each actor raise after writing that many parts: the crash
    the resume tests simulate.)
    """
    from med42ray import storage
    from med42ray.models import model_source

    start = time.perf_counter()
    before = storage.transfers()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mirror = cfg.resources.hub_mirror
    model_cfg = model_config_for(cfg, model)
    model_id = model or cfg.model.name_or_path
    if adapter:
        adapter = str(adapter) if storage.is_uri(adapter) else str(Path(adapter).resolve())
        model_id = f"{model_id}+{adapter.rstrip('/').rsplit('/', 1)[-1]}"
    tokenizer = driver_tokenizer(model_cfg, mirror)
    source = model_source(model_cfg, mirror)
    runs = prepare_protocols(cfg, tokenizer, source, adapter, str(parts or out / "parts"))
    pending = pending_requests(runs, earlier_parts)
    scored: dict[str, Any] = {"scored": 0, "actors": None, "placement": None}
    if pending:
        where = {r.name: r.parts for r in runs}
        scored = score_requests(
            pending, cfg, model_cfg, adapter, where, _fail_after_parts, in_process
        )

    wall = time.perf_counter() - start
    info = {"model": label or model_id, "engine": cfg.eval.engine}
    predictions = all_predictions(runs, info)
    predictions["clean"] = clean_items(predictions, read_overlap(overlap))
    summary = summarise(predictions, {**info, "wall_s": wall})
    now = storage.transfers()
    requests = sum(len(r.requests) for r in runs)
    record = {
        "run_key": runs[0].key,  # the first protocol's; every protocol's under "protocols"
        "model_path": model_cfg.name_or_path,
        "adapter": adapter,
        "parts": runs[0].parts,
        "requests": requests,
        "resumed": requests - len(pending),
        "scored": scored["scored"],
        "items": len(predictions),
        "wall_s": wall,
        "protocols": protocol_records(runs, pending, predictions),
        "transfers": {
            "driver": {k: now[k] - before[k] for k in TRANSFER_KEYS},
            "actors": scored["actors"],
        },
        "placement": scored["placement"],
        "prompt_formats": {
            r.name: {t.spec.task: [t.fmt.name, t.fmt.version] for t in r.tasks} for r in runs
        },
        "benchmarks": {t.spec.task: t.provenance for t in runs[0].tasks},
    }
    write_outputs(out, cfg, predictions, summary, record)
    return summary
