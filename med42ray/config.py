"""Typed experiment configuration.

One :class:`ExperimentConfig` drives every stage. It is read from YAML by :func:`load_config`,
the one way configs are read; the same file runs on a laptop and on a cluster (only
``resources`` changes). Unknown keys and bad values fail with a :class:`ConfigError` that names
the file, the field path and the reason.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from med42ray.benchmarks import NORMALISERS, list_tasks

MED42_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>: {{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}<|prompter|>:{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>:"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}{{ '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>:{% endif %}"
)
"""The released Med42 prompt format, with generation markers for assistant-only loss masks."""

MED42_SYSTEM_PROMPT = "You are a helpful medical assistant created by M42 Health in the UAE."
CHAT_TEMPLATES = {"med42": MED42_CHAT_TEMPLATE}
"""Chat templates a config can name (`model.chat_template: med42`) instead of inlining them."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the field and the reason."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------- data
CHAT_FORMATS = ("alpaca", "sharegpt", "messages", "qa")
"""Chat-corpus schemas; every benchmark schema (`med42ray.benchmarks.NORMALISERS`) trains too."""
SourceFormat = Literal[CHAT_FORMATS + tuple(NORMALISERS)]  # type: ignore[valid-type]


class SourceConfig(Section):
    """One raw corpus: where it is, which schema it has, and how much of it to use."""

    name: str = Field(min_length=1, description="Label used in manifests and reports.")
    path: str = Field(
        min_length=1,
        description="File, glob, directory, object-store URI, or `hf://owner/dataset`.",
    )
    format: SourceFormat
    split: str = "train"
    subset: str | None = Field(default=None, description="Hub config name, e.g. `pqa_labeled`.")
    weight: float = Field(default=1.0, gt=0, le=1, description="Fraction of records kept.")
    max_records: int | None = Field(default=None, gt=0)
    epochs: int = Field(default=1, ge=1, description="Times each kept record is repeated.")


class FilterConfig(Section):
    min_tokens: int = Field(default=4, ge=0)
    max_tokens: int = Field(default=4096, gt=0)
    max_non_text_ratio: float = Field(default=0.3, ge=0, le=1)
    languages: list[str] | None = Field(default=None, description="Keep only these (optional).")

    @model_validator(mode="after")
    def _bounds(self) -> FilterConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must not exceed max_tokens")
        return self


class NearDedupConfig(Section):
    enabled: bool = True
    shingle_size: int = Field(default=5, ge=1, description="Words per shingle.")
    num_perm: int = Field(default=128, ge=8)
    bands: int = Field(default=16, ge=1)
    threshold: float = Field(default=0.8, gt=0, le=1, description="Jaccard similarity.")

    @model_validator(mode="after")
    def _bands_divide(self) -> NearDedupConfig:
        if self.num_perm % self.bands:
            raise ValueError(
                f"num_perm ({self.num_perm}) must be divisible by bands ({self.bands})"
            )
        return self


class ParaphraseConfig(Section):
    """The paraphrase check (LMSYS's llm-decontaminator: reworded test items evade n-gram
    filters): for every benchmark item, its `top_k` nearest training records by a similarity
    that survives rewording, listed "to review" in the data stage's `paraphrase.md`. Nothing is
    removed unless `remove_above` is set."""

    enabled: bool = False
    method: Literal["tfidf", "embedding"] = Field(
        default="tfidf",
        description="`tfidf`: cosine of word 1-2 gram TF-IDF vectors (no download); "
        "`embedding`: cosine of mean-pooled hidden states of `model`.",
    )
    model: str | None = Field(
        default=None, description="`embedding`'s model: a hub id or folder (e.g. an encoder)."
    )
    top_k: int = Field(default=3, gt=0)
    remove_above: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Remove training records at least this similar to an item (default: "
        "review only).",
    )

    @model_validator(mode="after")
    def _embedding_needs_a_model(self) -> ParaphraseConfig:
        if self.method == "embedding" and not self.model:
            raise ValueError("method `embedding` needs `model` (a hub id or folder)")
        return self


class DecontamConfig(Section):
    """Benchmark decontamination. A record is removed when it holds enough of ONE benchmark
    item: `min_coverage` of the item's distinctive n-grams, or `min_contiguous_words` contiguous
    words of it (or its whole stem when shorter), or a short item whole. n-grams found in more
    than `max_item_frequency` items (exam boilerplate) are no evidence on their own."""

    enabled: bool = True
    ngram: int = Field(default=13, ge=1, description="Word n-gram size (13 as in GPT-3).")
    threshold: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Legacy share threshold: when > 0 it is used as `min_coverage`; 0 defers "
        "to `min_coverage`.",
    )
    min_coverage: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Remove when the record holds at least this share of one item's "
        "(non-frequent) n-grams; 0 removes on any shared non-frequent n-gram.",
    )
    min_contiguous_words: int = Field(
        default=50,
        ge=0,
        description="Remove on a contiguous match of this many words of one item (or of its "
        "whole stem when the stem is shorter); 0 turns the rule off.",
    )
    max_item_frequency: int = Field(
        default=2,
        ge=0,
        description="n-grams found in more than this many distinct items are boilerplate, not "
        "evidence on their own; 0 keeps every n-gram.",
    )
    fuzzy: bool = False
    fuzzy_threshold: float = Field(default=0.8, gt=0, le=1)
    benchmarks: list[str] | None = Field(
        default=None, description="Benchmarks to index; default: those in `eval.benchmarks`."
    )
    paraphrase: ParaphraseConfig = Field(default_factory=ParaphraseConfig)

    @property
    def coverage(self) -> float:
        """The share rule in force: the legacy `threshold` when set, else `min_coverage`."""
        return self.threshold if self.threshold > 0 else self.min_coverage


class DataConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=list)
    system_prompt: str | None = MED42_SYSTEM_PROMPT
    filters: FilterConfig = Field(default_factory=FilterConfig)
    exact_dedup: bool = True
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    decontamination: DecontamConfig = Field(default_factory=DecontamConfig)
    max_quarantine_rate: float = Field(default=0.05, ge=0, le=1)
    allow_lost_files: list[str] = Field(
        default_factory=list,
        description="Sources (by name) whose unreadable files are tolerated: counted in the "
        "manifest instead of failing the stage.",
    )
    rows_per_shard: int = Field(default=50_000, gt=0)
    eval_fraction: float = Field(default=0.0, ge=0, lt=1, description="Held-out share.")

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        return self


# -------------------------------------------------------------------------------------- model
class TinyPretrainConfig(Section):
    """A short causal-LM pre-training of the tiny model, part of its (cached) build."""

    data: str = Field(
        default="data/tiny/pretrain/pretrain.jsonl",
        description="JSONL of `text` or `messages` records (relative: to the working "
        "directory, else to the repository).",
    )
    steps: int = Field(default=250, ge=1)
    batch_size: int = Field(default=16, ge=1)
    seq_len: int = Field(default=256, ge=16)
    lr: float = Field(default=3.0e-3, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.1, ge=0)


class TinyModelConfig(Section):
    """The embedded offline model: a small Llama with a local tokenizer, random weights unless
    `pretrain` is set (then pre-trained briefly on made-up subjects, no real fact)."""

    vocab_size: int = Field(default=2048, ge=300)
    hidden_size: int = Field(default=128, ge=64)
    intermediate_size: int = Field(default=256, ge=1)
    num_hidden_layers: int = Field(default=2, ge=1)
    num_attention_heads: int = Field(default=2, ge=1)
    num_key_value_heads: int | None = None
    max_position_embeddings: int = Field(default=1024, ge=16)
    seed: int = 0
    pretrain: TinyPretrainConfig | None = None

    @model_validator(mode="after")
    def _head_dim(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.hidden_size // self.num_attention_heads < 64:
            raise ValueError(
                "head dimension (hidden_size / num_attention_heads) must be >= 64 "
                "(vLLM's CPU attention rejects smaller heads)"
            )
        return self


class ModelConfig(Section):
    name_or_path: str = Field(
        default="tiny",
        description="Hub id (`meta-llama/Llama-2-7b-hf`), local folder, or `tiny` for the "
        "embedded offline model built from `tiny`.",
    )
    revision: str | None = None
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template, or the name of a shipped one (`med42`); overrides "
        "the tokenizer's own.",
    )
    attn_implementation: str | None = Field(
        default=None,
        description="`sdpa` (transformers' default), `eager`, `flash_attention_2`/`_3`: "
        "packed batches are flattened into one row, so each isolates its samples.",
    )
    liger_kernel: bool | Literal["auto"] = Field(
        default="auto",
        description="Liger's Triton kernels for training (fused RMSNorm, SwiGLU, RoPE and the "
        "chunked linear-cross-entropy that never materialises the logits): `auto` uses them "
        "when CUDA is present and `liger-kernel` is installed (`pip install med42ray[gpu]`), "
        "`true` requires them, `false` never.",
    )

    @field_validator("chat_template")
    @classmethod
    def _named_template(cls, value: str | None) -> str | None:
        return CHAT_TEMPLATES.get(value, value) if value is not None else None


# -------------------------------------------------------------------------------------- train
class DeepSpeedConfig(Section):
    enabled: bool = True
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_param: bool = False
    config_path: str | None = Field(
        default=None, description="A DeepSpeed JSON that overrides the generated settings."
    )

    @model_validator(mode="after")
    def _offload(self) -> DeepSpeedConfig:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage 3")
        return self


class LoraConfig(Section):
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        min_length=1,
    )
    merge_on_export: bool = False


class OptimizerConfig(Section):
    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)


class ScheduleConfig(Section):
    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)


class CurveConfig(Section):
    """Benchmark accuracy during training: every `eval_every_checkpoint`-th checkpoint (and the
    last) is scored on `benchmarks` (names in `eval.benchmarks`; empty: all), `limit` items
    each, by the first of `eval.protocols`, in a Ray task of its own on the evaluation's
    resources while training goes on (Ray Train's checkpoint validation). The report plots
    accuracy against tokens seen, full and LoRA on one figure."""

    eval_every_checkpoint: int = Field(default=0, ge=0, description="0: no curve.")
    benchmarks: list[str] = Field(default_factory=list)
    limit: int | None = Field(default=100, gt=0, description="Items per benchmark.")


class TrainConfig(Section):
    strategy: Literal["full", "lora"] = "full"
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, gt=0, description="Stop after this many steps.")
    micro_batch_size: int = Field(default=1, gt=0, description="Rows per worker per step.")
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    data_shards: int | None = Field(
        default=None,
        gt=0,
        description="Split the prepared data into this many fixed shards (a multiple of "
        "resources.num_workers, dividing the rows of a step over all workers): every worker "
        "count with the same global batch then trains on the same rows in the same order "
        "(full and LoRA on different numbers of GPUs). Default: one shard per worker.",
    )
    max_seq_len: int = Field(default=4096, gt=0)
    packing: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    max_grad_norm: float = Field(default=1.0, ge=0)
    log_every: int = Field(default=1, gt=0)
    eval_every: int | None = Field(default=None, gt=0)
    checkpoint_every: int | None = Field(default=None, gt=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    resume: bool = True
    max_failures: int = Field(default=0, ge=-1)
    seed: int = 42
    curve: CurveConfig = Field(default_factory=CurveConfig)


# --------------------------------------------------------------------------------------- tune
SEARCH_DOMAINS = ("loguniform", "uniform", "quniform", "randint", "choice", "grid")


class TuneConfig(Section):
    """A Ray Tune sweep over this experiment: `search_space` maps dotted config fields to
    domains, e.g. `train.optimizer.lr: {loguniform: [1.0e-5, 1.0e-3]}`,
    `train.lora.r: {choice: [8, 16, 32]}`, `train.strategy: {grid: [full, lora]}`."""

    num_samples: int = Field(default=1, gt=0, description="Samples (times every grid point).")
    metric: str = Field(
        default="eval_loss",
        description="A reported training metric, or "
        "`accuracy` / `<benchmark>_acc` when `evaluate` is on.",
    )
    mode: Literal["min", "max"] = "min"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(default=1, gt=0, description="ASHA: reports before stopping.")
    reduction_factor: float = Field(default=2, gt=1)
    search_alg: Literal["random", "grid", "optuna"] = "random"
    max_concurrent_trials: int | None = Field(default=None, gt=0)
    evaluate: bool = Field(default=False, description="Score each trial's model after training.")
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="Where trials are logged when mlflow is installed (`http://...`, "
        "`databricks`, ...); default `MLFLOW_TRACKING_URI`, else a file store in OUT/mlruns.",
    )
    search_space: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _domains(self) -> TuneConfig:
        for key, domain in self.search_space.items():
            if len(domain) != 1 or next(iter(domain)) not in SEARCH_DOMAINS:
                raise ValueError(
                    f"search_space.{key}: expected one of {SEARCH_DOMAINS} "
                    f"with a list of values, got {domain}"
                )
            kind, values = next(iter(domain.items()))
            if kind in ("loguniform", "uniform", "randint") and len(values) != 2:
                raise ValueError(f"search_space.{key}: {kind} takes [low, high]")
            if kind == "quniform" and len(values) != 3:
                raise ValueError(f"search_space.{key}: quniform takes [low, high, q]")
            if kind in ("choice", "grid") and not values:
                raise ValueError(f"search_space.{key}: {kind} needs at least one value")
        return self


# --------------------------------------------------------------------------------------- eval
class BenchmarkConfig(Section):
    name: str = Field(min_length=1, description="A task in `med42ray/benchmarks/tasks/` (`medqa`).")
    path: str | None = Field(default=None, description="Local file instead of the hub id.")
    limit: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _known_task(self) -> BenchmarkConfig:
        if self.name not in list_tasks():
            raise ValueError(f"unknown benchmark {self.name!r}; known: {', '.join(list_tasks())}")
        return self


ScoringName = Literal["loglikelihood", "generate"]
PromptFormatName = Literal["multiple_choice", "cloze", "cot"]
PROTOCOL_NAMES: dict[tuple[str, str], str] = {
    ("loglikelihood", "multiple_choice"): "letter",
    ("loglikelihood", "cloze"): "cloze",
    ("generate", "multiple_choice"): "generate",
    ("generate", "cot"): "cot",
}
"""(scoring, prompt_format) -> a protocol's default name; the valid combinations (a cloze prompt
names no option to generate, a chain-of-thought prompt asks for reasoning, not a scored option)."""


class ProtocolConfig(Section):
    """One scoring protocol: how items are asked (`prompt_format`, `chat_template`) and answered
    (`scoring`). Default name: `letter`, `cloze`, `generate` or `cot`, `+chat` with the chat
    template."""

    name: str | None = Field(default=None, min_length=1, pattern=r"^[\w+.-]+$")
    scoring: ScoringName = "loglikelihood"
    prompt_format: PromptFormatName = "multiple_choice"
    chat_template: bool = Field(
        default=False,
        description="Render each prompt as a user turn with the model's chat template "
        "(lm-eval's `--apply_chat_template`; `data.system_prompt` as the system turn).",
    )

    @model_validator(mode="after")
    def _valid_combination(self) -> ProtocolConfig:
        if (self.scoring, self.prompt_format) not in PROTOCOL_NAMES:
            needs = [s for s, f in PROTOCOL_NAMES if f == self.prompt_format]
            raise ValueError(
                f"eval.prompt_format {self.prompt_format} needs eval.scoring {' or '.join(needs)}"
            )
        return self

    @property
    def label(self) -> str:
        """The protocol's name in parts, predictions and report columns."""
        default = PROTOCOL_NAMES[(self.scoring, self.prompt_format)]
        return self.name or default + ("+chat" if self.chat_template else "")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


class EvalConfig(Section):
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    engine: Literal["hf", "vllm"] = "hf"
    protocols: list[ProtocolConfig] | None = Field(
        default=None,
        min_length=1,
        description="The scoring protocols, each scored for every model and shown side by side "
        "in the report: `{scoring, prompt_format, chat_template, name}`. Default: every valid "
        "combination of `scoring` x `prompt_format` x `use_chat_template` (each a value or a "
        "list; cloze with generate and cot with loglikelihood are skipped). Give one or the "
        "other, not both.",
    )
    scoring: ScoringName | list[ScoringName] = Field(
        default="loglikelihood",
        description="`loglikelihood` (lm-eval's multiple choice: each option's summed "
        "log-likelihood) or `generate` (a greedy answer, the option it names parsed); a list "
        "scores each.",
    )
    prompt_format: PromptFormatName | list[PromptFormatName] = Field(
        default="multiple_choice",
        description="`multiple_choice`: the task YAMLs as they are (lm-eval's prompts; lettered "
        "tasks score the option letters). `cloze`: lettered tasks ask the question alone and "
        "score each option's text (lm-eval's `mmlu_continuation`, OLMES's cloze formulation), "
        "the format small base models can answer; log-likelihood scoring only. `cot`: zero-shot "
        "chain of thought, the question and every labelled option, step-by-step reasoning "
        "ending in `The answer is (X)` (lm-eval's `mmlu_pro` prompt), generate scoring only. A "
        "list scores each.",
    )
    num_fewshot: int = Field(default=0, ge=0)
    limit: int | None = Field(
        default=None,
        gt=0,
        description="Score only the first N items of every benchmark (lm-eval's `--limit`): "
        "smoke runs and rehearsals, never a reported score. A benchmark's own `limit` wins.",
    )
    use_chat_template: bool | list[bool] = False
    batch_size: int = Field(default=16, gt=0)
    max_model_len: int = Field(default=4096, gt=0)
    max_new_tokens: int = Field(default=16, gt=0)
    num_actors: int = Field(default=1, gt=0)
    gpus_per_actor: float = Field(default=0, ge=0)
    tensor_parallel_size: int = Field(default=1, gt=0)
    seed: int = 1234

    @model_validator(mode="after")
    def _protocols_resolve(self) -> EvalConfig:
        axes = [
            name
            for name in ("scoring", "prompt_format", "use_chat_template")
            if getattr(self, name) != type(self).model_fields[name].default
        ]  # not fields_set: a dumped config names every field, at its default
        self._axis_protocols()  # a single invalid combination raises, protocols given or not
        if self.protocols is not None and axes:
            raise ValueError(
                f"give eval.protocols or eval.{'/'.join(axes)}, not both "
                "(each protocol names its scoring, prompt_format and chat_template)"
            )
        names = [p.label for p in self.resolved_protocols()]
        if len(set(names)) != len(names):
            raise ValueError(f"eval.protocols: names must be unique, got {names}")
        if self.num_fewshot and any(p.prompt_format == "cot" for p in self.resolved_protocols()):
            raise ValueError("eval.prompt_format cot is zero-shot: set eval.num_fewshot 0")
        return self

    def resolved_protocols(self) -> list[ProtocolConfig]:
        """The protocols to score, in order: `protocols`, or the valid combinations of the
        `scoring`, `prompt_format` and `use_chat_template` values (a single invalid one raises)."""
        return list(self.protocols) if self.protocols is not None else self._axis_protocols()

    def _axis_protocols(self) -> list[ProtocolConfig]:
        combos = [
            (s, f, c)
            for c in _as_list(self.use_chat_template)
            for s in _as_list(self.scoring)
            for f in _as_list(self.prompt_format)
        ]
        valid = [x for x in combos if x[:2] in PROTOCOL_NAMES]
        if not valid or len(combos) == 1:  # a single combination is checked as given
            valid = combos
        return [ProtocolConfig(scoring=s, prompt_format=f, chat_template=c) for s, f, c in valid]


# ------------------------------------------------------------------------------------- report
class ReportConfig(Section):
    title: str = "Med42: full-parameter fine-tuning vs LoRA"
    plots: bool = True


# ---------------------------------------------------------------------------------- resources
class ResourcesConfig(Section):
    ray_address: str | None = Field(
        default=None, description="Ray to join; default `RAY_ADDRESS`, else a local Ray."
    )
    num_workers: int = Field(default=1, gt=0)
    use_gpu: bool = False
    gpus_per_worker: float = Field(default=1, ge=0)
    cpus_per_worker: float = Field(default=1, gt=0)
    storage_path: str | None = Field(
        default=None, description="Ray Train/Tune storage: a folder, `s3://` or `gs://`."
    )
    hub_mirror: str | None = Field(
        default=None,
        description="Read hub datasets (benchmarks, `hf://` sources) from a mirror instead of "
        "the hub: a folder or object-store prefix holding `datasets/<owner>/<name>` laid out as "
        "the hub repository is (its files and dataset card), and hub models from "
        "`models/<owner>/<name>`. On object storage each node copies what it reads into its "
        "own cache once. Default: the hub.",
    )
    accelerator_resource: str | None = Field(
        default=None,
        description="A custom Ray resource that every training worker and evaluation actor "
        "also asks for, one unit per GPU it uses (one per worker or actor on CPU): pins them "
        "to the nodes that advertise it, e.g. a GPU node type's label, or `fake_gpu` in the "
        "cluster rehearsal. Default: none.",
    )
    shared_filesystem: bool = Field(
        default=False,
        description="The run folder (`--out`) is on a filesystem every node mounts (EFS, "
        "a PVC). Without it, a local `--out` on a cluster of several nodes is refused: use an "
        "object-store URI.",
    )


# ---------------------------------------------------------------------------------------- run
class RunConfig(Section):
    """What `med42ray run` does: the strategies it trains on the same data, and what it scores.

    `overrides` holds per-strategy changes as dotted keys, applied on top of this config for
    that strategy only, e.g. `{lora: {train.optimizer.lr: 2.0e-4}}` (LoRA usually wants a
    higher learning rate than full fine-tuning).
    """

    strategies: list[Literal["full", "lora"]] = Field(
        default_factory=lambda: ["full", "lora"], min_length=1
    )
    evaluate_base: bool = True
    overrides: dict[Literal["full", "lora"], dict[str, Any]] = Field(default_factory=dict)
    from_sweep: dict[Literal["full", "lora"], str] = Field(
        default_factory=dict,
        description="Per strategy, the `--out` folder (or URI) of a finished `med42ray sweep` "
        "of that strategy: its best trial's values (`best/best.json`) are applied on top of "
        "`overrides`, so each strategy trains with its own tuned learning rate.",
    )
    seeds: list[int] = Field(
        default_factory=list,
        description="Train and evaluate every strategy once per seed (as `train.seed`; the "
        "prepared data is the same for all); the report gives the mean and spread over seeds "
        "and pools them in the paired differences. Empty: one run at `train.seed`.",
    )

    @model_validator(mode="after")
    def _unique(self) -> RunConfig:
        for name in ("strategies", "seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must be unique, got {values}")
        if any(seed < 0 for seed in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {self.seeds}")
        return self


# ------------------------------------------------------------------------------------- whole
class ExperimentConfig(Section):
    name: str = Field(default="experiment", min_length=1)
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _curve_benchmarks_are_evaluated(self) -> ExperimentConfig:
        known = [b.name for b in self.eval.benchmarks]
        unknown = [b for b in self.train.curve.benchmarks if b not in known]
        if unknown:
            raise ValueError(
                f"train.curve.benchmarks: {unknown} not in eval.benchmarks ({', '.join(known)})"
            )
        return self

    @model_validator(mode="after")
    def _data_shards_fit_the_workers(self) -> ExperimentConfig:
        t, workers = self.train, self.resources.num_workers
        if t.data_shards is None:
            return self
        step_rows = t.micro_batch_size * t.gradient_accumulation_steps * workers
        if t.data_shards % workers or step_rows % t.data_shards:
            raise ValueError(
                f"train.data_shards: {t.data_shards} must be a multiple of "
                f"resources.num_workers ({workers}) and divide the rows of a step "
                f"(micro_batch_size x gradient_accumulation_steps x workers = {step_rows})"
            )
        return self

    @model_validator(mode="after")
    def _strategy_overrides_apply(self) -> ExperimentConfig:
        for strategy in self.run.overrides:
            strategy_config(self, strategy)  # raises naming run.overrides.<strategy>
        return self

    def fingerprint(self, *sections: str) -> str:
        """Short content hash of the named sections (all when none): stage cache keys."""
        dumped = self.model_dump(mode="json")
        picked = {k: dumped[k] for k in sections} if sections else dumped
        blob = json.dumps(picked, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "<root>"


def format_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem: `file: field.path: reason`."""
    lines = []
    for err in error.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        lines.append(f"{source}: {_field_path(loc)}: {reason}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate an already-parsed mapping; errors name `source` and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from `path`; unreadable or invalid files are one-line `ConfigError`s."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what}: {err.strerror or err}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}".replace("\n", " ")) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `override` on top of `base`, merging nested dicts key by key (lists and
    scalars are replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    overlays: Sequence[str | Path] = (),
) -> ExperimentConfig:
    """Read and validate an experiment YAML: `overlays` (YAML files, e.g. a cluster's resources
    and storage kept apart from the recipe) merged on top in order, then dotted-key `overrides`.
    Errors name the recipe and the overlays."""
    raw = read_yaml(path)
    for overlay in overlays:
        raw = deep_merge(raw, read_yaml(overlay, "overlay"))
    source = " + ".join(str(p) for p in (path, *overlays))
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value, source=source)
    return parse_config(raw, source)


def set_dotted(raw: Any, key: str, value: Any, source: str = "<config>") -> None:
    """Set `a.b.c` in a nested mapping, creating sections as needed."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {key}: `{part}` is not a section")
        node = child
    node[leaf] = copy.deepcopy(value)  # never share (and later mutate) the caller's objects


def with_overrides(
    cfg: ExperimentConfig, overrides: dict[str, Any], source: str = "<overrides>"
) -> ExperimentConfig:
    """`cfg` with dotted-key values set (`train.optimizer.lr: 1e-4`), validated again; errors
    name `source` (a sweep trial, `run.overrides.lora`, a `--set` flag)."""
    raw = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        set_dotted(raw, key, value, source)
    return parse_config(raw, source)


SEED_SUFFIX = re.compile(r"^(?P<model>.+)-seed(?P<seed>\d+)$")


def seeded_label(model: str, seed: int | None) -> str:
    """A trained model's stage label: `full`, or `full-seed1` when `run.seeds` is set."""
    return model if seed is None else f"{model}-seed{seed}"


def split_seed(label: str) -> tuple[str, int | None]:
    """`seeded_label`'s inverse: `full-seed1` -> ("full", 1), `base` -> ("base", None)."""
    match = SEED_SUFFIX.match(label)
    return (match["model"], int(match["seed"])) if match else (label, None)


def strategy_config(
    cfg: ExperimentConfig, strategy: str, seed: int | None = None
) -> ExperimentConfig:
    """`cfg` as the run trains `strategy` (with `seed` as `train.seed`, when given):
    `train.strategy` set, `run.overrides` applied (and emptied, so the result describes one
    strategy's training alone)."""
    changes = {
        "run.overrides": {},
        "train.strategy": strategy,
        **cfg.run.overrides.get(strategy, {}),
        **({"train.seed": seed} if seed is not None else {}),
    }
    return with_overrides(cfg, changes, f"run.overrides.{strategy}")
