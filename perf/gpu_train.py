"""GPU training benchmark: a 1B-class Llama, our loop vs TRL's packed SFTTrainer, same GPU.

Not part of CI. On a machine with one CUDA GPU it trains a randomly initialised Llama
(hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192, vocab 32000: 1.1B
parameters) on packed 4k-token rows, bf16 autocast over fp32 master weights,
flash-attention 2 when `flash_attn` is importable (else sdpa), for a few hundred steps, with
full fine-tuning and with LoRA:

  ours        `med42ray.train.run_training` with a config built in code (1 worker, the GPU,
              the DDP engine, packing: each micro-batch flattened into one varlen row);
  trl_packed  TRL 1.16 `SFTTrainer`, `packing=True, packing_strategy="bfd"` (padding-free),
              `assistant_only_loss=True`, with the same model, data, optimiser (torch AdamW),
              schedule, micro-batch rows and steps (`perf/train_bench.py`'s baseline, run in a
              process of its own with `.venv-trl` on its path).

It prints non-padding tokens/s per GPU (median over the steps after the warm-up), model
TFLOP/s and MFU: model FLOPs per step = (4N + 2N_trainable) per non-padding token (6N for
full fine-tuning; N leaves out the input embedding) + 6·L·d·s² per sample of length s
(causal attention), over the GPU's dense bf16 peak (`med42ray.train.metrics`). Both runs
count FLOPs with the same `ModelFlops`. The data are the bench's fixture chats with many turns
(token lengths spread up to the 4k context); the tokenizer is the embedded tiny one (a small
BPE vocabulary: ids stay below the model's vocabulary, so FLOPs are the real model's).

On a GPU machine (no hub access needed; liger-kernel and flash-attn are optional):

    MED42RAY_TARGET=gpu bash scripts/setup_venv.sh
    bash perf/setup_bench.sh trl                # TRL 1.16 into .venv-trl
    .venv/bin/pip install flash-attn --no-build-isolation   # optional: flash-attention 2
    .venv/bin/python perf/gpu_train.py --json gpu_train.json       # ~25 min on one H100/H200

`--steps`, `--seq`, `--micro-batch`, `--vocab`, `--strategies`, `--no-trl` change the run.
`--tiny` runs the same path end to end on CPU in a few minutes (a 2-layer Llama, 512-token
rows, fp32, sdpa, 8 steps) to prove the script works without a GPU. Targets (issue 19): full
fine-tuning MFU >= 45% on one H100/H200-class GPU and ours >= TRL's tokens/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF))
import train_bench as bench  # noqa: E402  (perf/ is not a package)

REPO = bench.REPO


@dataclass(frozen=True)
class Shape:
    """The Llama to train, the rows and the run length."""

    hidden: int = 2048
    layers: int = 16
    heads: int = 32
    kv_heads: int = 8
    intermediate: int = 8192
    vocab: int = 32000
    seq: int = 4096
    micro_batch: int = 4  # packed rows per step, flattened into one row of ~16k tokens
    steps: int = 300
    warmup: int = 20
    chats: int = 8000
    max_turns: int = 120  # ~35 tokens a turn: the longest chats fill the 4k context
    stop: float = 0.05  # a chat ends after a turn with this probability: mean ~20 turns


TINY = Shape(
    hidden=128,
    layers=2,
    heads=2,
    kv_heads=1,
    intermediate=256,
    vocab=2048,
    seq=512,
    micro_batch=2,
    steps=8,
    warmup=2,
    chats=300,
    max_turns=10,
    stop=0.4,
)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def attention_kernel(gpu: bool) -> str:
    """flash-attention 2 on a GPU with `flash_attn` installed, else sdpa."""
    return "flash_attention_2" if gpu and importlib.util.find_spec("flash_attn") else "sdpa"


def build_model_dir(shape: Shape, out: Path, gpu: bool) -> Path:
    """A randomly initialised Llama of `shape` and the tiny tokenizer, as a HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from med42ray.config import TinyModelConfig
    from med42ray.tiny.build import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(
        TinyModelConfig(vocab_size=min(shape.vocab, 8192), max_position_embeddings=shape.seq)
    )
    if len(tokenizer) > shape.vocab:
        raise ValueError(f"--vocab {shape.vocab} is below the tokenizer's {len(tokenizer)} ids")
    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.seq,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if gpu else "cpu"):  # initialising 1B weights on a GPU: seconds
        model = LlamaForCausalLM(config).to(torch.bfloat16 if gpu else torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    if gpu:  # hand the GPU memory to the training worker and the TRL process
        torch.cuda.empty_cache()
    return out


def experiment(strategy: str, shape: Shape, model_dir: Path, gpu: bool, cpus: int):
    """Our loop's config for this run: one worker on the GPU (or CPUs), DDP, packed rows."""
    return bench.experiment(
        strategy,
        shape.steps,
        {
            "name": "gpu-train",
            "model.name_or_path": str(model_dir),
            "model.dtype": "float32",  # fp32 master weights, bf16 autocast (train.precision)
            "model.attn_implementation": attention_kernel(gpu),
            "train.lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "train.optimizer.lr": 2e-5 if strategy == "full" else 2e-4,
            "train.max_seq_len": shape.seq,
            "train.micro_batch_size": shape.micro_batch,
            "train.precision": "bf16" if gpu else "fp32",
            "train.gradient_checkpointing": False,
            "resources.use_gpu": gpu,
            "resources.cpus_per_worker": cpus,
        },
    )


def run_strategy(strategy: str, shape: Shape, model_dir: Path, data: Path, work: Path, opts):
    """Ours, then (unless `--no-trl`) TRL, for one strategy; {run: figures}."""
    cfg = experiment(strategy, shape, model_dir, opts.gpu, opts.cpus)
    runs = {"ours": bench.ours(cfg, data, work / f"ours-{strategy}", shape.warmup)}
    if opts.trl:
        spec = {
            "experiment": cfg.model_dump(mode="json"),
            "model_path": str(model_dir),
            "data": str(data),
            "steps": shape.steps,
            "warmup": shape.warmup,
            "threads": opts.cpus,
            "use_cpu": not opts.gpu,
            "bf16": opts.gpu,
            "batch_size": shape.micro_batch,
        }
        folder = work / strategy
        folder.mkdir(exist_ok=True)
        runs["trl_packed"] = bench.run_baseline("trl_packed", spec, folder)
    return runs


def print_results(results: dict[str, dict[str, dict[str, Any]]], device: str) -> None:
    print(f"device: {device}")
    print(
        f"{'run':<18}{'tok/s/GPU':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak MB':>10}"
        f"{'trainable':>15}{'loss':>8}{'wall s':>8}"
    )
    for strategy, runs in results.items():
        for kind, r in runs.items():
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "n/a"
            print(
                f"{strategy + ' ' + kind:<18}{r['real_tokens_per_s']:>11.0f}"
                f"{r.get('model_tflops_per_s_per_device', float('nan')):>9.2f}{mfu:>7}"
                f"{r['peak_memory_mb']:>10.0f}{r['trainable_params']:>15,}"
                f"{r['losses'][-1]:>8.3f}{r['wall_s']:>8.0f}"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on CPU, 8 steps")
    parser.add_argument("--json", type=Path, help="write ratios and raw figures here")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--seq", type=int)
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--chats", type=int)
    parser.add_argument("--strategies", nargs="+", default=["full", "lora"])
    parser.add_argument("--no-trl", dest="trl", action="store_false")
    parser.add_argument("--cpus", type=int, help="CPUs for the worker (default: 2 / 8 on GPU)")
    return parser.parse_args(argv)


def resolve(opts: argparse.Namespace) -> Shape:
    """The run's `Shape` (`--tiny` or the 1B default, with the flags' overrides), and
    `opts.gpu` / `opts.cpus` set."""
    opts.gpu = not opts.tiny and cuda_available()
    if not opts.tiny and not opts.gpu:
        raise SystemExit("no CUDA GPU: run with --tiny on CPU (the 1B model needs a GPU)")
    opts.cpus = opts.cpus or (8 if opts.gpu else bench.CPUS)
    base = TINY if opts.tiny else Shape()
    flags = {
        "steps": opts.steps,
        "warmup": opts.warmup,
        "seq": opts.seq,
        "micro_batch": opts.micro_batch,
        "vocab": opts.vocab,
        "chats": opts.chats,
    }
    return Shape(**{**asdict(base), **{k: v for k, v in flags.items() if v is not None}})


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    shape = resolve(opts)
    if opts.trl and not bench.trl_available():
        print(f"TRL baseline NOT RUN: trl is not in {bench.TRL_DIR.name}; {bench.TRL_HINT}")
        opts.trl = False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from med42ray.cluster import init_ray

    init_ray(num_cpus=None if opts.gpu else opts.cpus)
    work = Path(tempfile.mkdtemp(prefix="med42ray-gpu-train-"))
    model_dir = build_model_dir(shape, work / "model", opts.gpu)
    data = work / "chat.jsonl"
    chats = bench.mixed_length_chats(shape.chats, max_turns=shape.max_turns, stop=shape.stop)
    data.write_text("".join(json.dumps(c) + "\n" for c in chats))
    device = "cpu"
    if opts.gpu:
        import torch

        device = torch.cuda.get_device_name()
    print(
        f"Llama {shape.hidden}x{shape.layers} (heads {shape.heads}/{shape.kv_heads}, "
        f"vocab {shape.vocab}), {shape.micro_batch} packed rows of {shape.seq} per step, "
        f"{shape.steps} steps, attention {attention_kernel(opts.gpu)}, "
        f"{'bf16' if opts.gpu else 'fp32'}, on {device}"
    )
    results = {s: run_strategy(s, shape, model_dir, data, work, opts) for s in opts.strategies}
    print_results(results, device)
    ratios = {
        f"{s}_ours_vs_trl_packed": r["ours"]["real_tokens_per_s"]
        / r["trl_packed"]["real_tokens_per_s"]
        for s, r in results.items()
        if "trl_packed" in r
    }
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x non-padding tokens/s per GPU")
    doc = {
        "ratios": ratios,
        "runs": results,
        "setup": {
            **asdict(shape),
            "device": device,
            "attention": attention_kernel(opts.gpu),
            "precision": "bf16" if opts.gpu else "fp32",
            "cpus": opts.cpus,
            "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        },
    }
    out = opts.json or work / "results.json"
    out.write_text(json.dumps(doc, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
