"""Training throughput: our packed loop vs a plain Hugging Face `Trainer` (unpacked, padded).

Same tiny model, data, optimiser, schedule and step count, for full fine-tuning and for LoRA,
in one process run:

  (a) `med42ray.train.run_training`: packed rows of `max_seq_len`, 1 Ray Train worker with all
      the CPUs, the DDP engine (torch AdamW, as the HF Trainer uses);
  (b) `transformers.Trainer`: one sample per row, padded per batch (DataCollatorForSeq2Seq),
      in a fresh Ray task with the same CPUs, so its peak RSS is its own.

The data are multi-turn chats built from the training fixture's question/answer pairs with a
long-tailed number of turns (1 to 10; most chats short, a few long), so sample lengths spread
from ~30 to ~450 tokens as in real instruction corpora. Both train the same label tokens
(assistant-only masks from `tokenize_chat`). Throughput is the median over steps (after the
warm-up steps) of non-padding tokens / step time; the batch sizes give both about the same
non-padding tokens per step. On a shared machine wall-clock steps are noisy, so it also prints
non-padding tokens per CPU-second of the training process (all its threads), which other
processes' load does not move.

    .venv/bin/python perf/train_bench.py            # ~4 minutes on 2 CPU cores
Targets: packed non-padding tokens/s >= 1.3x the unpacked baseline; packed padding share < 5%.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURE = REPO / "tests" / "fixtures" / "train" / "chat.jsonl"
CHATS = 800
MAX_TURNS = 10
STEPS = 60
WARMUP = 5
SEQ = 512  # room for the longest chat; rows hold ~4 chats on average
PACKED_ROWS = 2  # packed rows per step (~2 x 500 real tokens)
CPUS = int(os.environ.get("BENCH_CPUS", "2"))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def mixed_length_chats(n: int, seed: int = 0) -> list[dict]:
    """`n` chats of 1..MAX_TURNS question/answer turns drawn from the fixture (geometric turn
    counts: ~40% single-turn), each with the fixture's system prompt half of the time."""
    import random

    rng = random.Random(seed)
    fixture = [json.loads(line)["messages"] for line in FIXTURE.read_text().splitlines()]
    system = next(m for chat in fixture for m in chat if m["role"] == "system")
    pairs = [[m for m in chat if m["role"] != "system"] for chat in fixture]
    chats = []
    for i in range(n):
        turns = 1
        while turns < MAX_TURNS and rng.random() > 0.4:
            turns += 1
        messages = [system] if rng.random() < 0.5 else []
        for pair in rng.sample(pairs, turns):
            messages += pair
        chats.append({"id": f"bench-{i}", "messages": messages})
    return chats


def unpacked_batch(data: Path, cfg) -> int:
    """Samples per HF step giving about the packed rows' non-padding tokens per step."""
    from med42ray.models import load_tokenizer, resolve_model_path
    from med42ray.train.tokenize import tokenize_chat

    path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, path)
    lengths = [
        len(tokenize_chat(tokenizer, json.loads(line)["messages"], SEQ))
        for line in data.read_text().splitlines()
    ]
    mean = sum(lengths) / len(lengths)
    print(f"sample lengths: mean {mean:.0f}, min {min(lengths)}, max {max(lengths)} tokens")
    return max(1, round(PACKED_ROWS * SEQ * 0.97 / mean))


def experiment(strategy: str):
    from med42ray.config import load_config

    return load_config(
        REPO / "configs" / "tiny.yaml",
        {
            "train.strategy": strategy,
            "train.deepspeed.enabled": False,
            "train.optimizer.lr": 1e-3 if strategy == "full" else 1e-2,
            "train.schedule.name": "cosine",
            "train.schedule.warmup_ratio": 0.1,
            "train.max_steps": STEPS,
            "train.max_seq_len": SEQ,
            "train.micro_batch_size": PACKED_ROWS,
            "train.packing": True,
            "train.checkpoint_every": None,
            "resources.num_workers": 1,
            "resources.cpus_per_worker": CPUS,
        },
    )


def ours(cfg, data: Path, out: Path) -> dict:
    from med42ray.train import run_training

    result = run_training(cfg, data, out)
    rows = [json.loads(x) for x in result.metrics_path.read_text().splitlines()][WARMUP:]
    return {
        "real_tokens_per_s": statistics.median(r["real_tokens_per_s"] for r in rows),
        "real_tokens_per_cpu_s": statistics.median(
            r["real_tokens_per_s"] * r["step_time_s"] / r["cpu_time_s"] for r in rows
        ),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in rows),
        "trainable_params": result.trainable_params,
        "padding_share": sum(
            r["tokens_per_s"] * r["padding_share"] * r["step_time_s"] for r in rows
        )
        / sum(r["tokens_per_s"] * r["step_time_s"] for r in rows),
        "final_loss": rows[-1]["loss"],
    }


def hf_trainer_baseline(cfg_json: dict, model_path: str, data: str, batch_size: int) -> dict:
    """Runs inside a fresh Ray worker process: HF Trainer, unpacked padded batches."""
    import resource

    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from med42ray.config import ExperimentConfig
    from med42ray.models import load_model, load_tokenizer
    from med42ray.train.strategies import build_strategy, count_parameters
    from med42ray.train.tokenize import tokenize_chat

    cfg = ExperimentConfig.model_validate(cfg_json)
    t = cfg.train
    torch.manual_seed(t.seed)
    tokenizer = load_tokenizer(cfg.model, model_path)
    samples = [
        tokenize_chat(tokenizer, json.loads(line)["messages"], t.max_seq_len)
        for line in Path(data).read_text().splitlines()
    ]
    rows = [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]
    strategy = build_strategy(cfg, model_path)
    model = strategy.adapt(load_model(cfg.model, model_path))
    trainable, _ = count_parameters(model)
    base = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    counts = []

    def collate(features):
        batch = base(features)
        counts.append((int(batch["attention_mask"].sum()), int(batch["attention_mask"].numel())))
        return batch

    times, cpu_times = [], []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)
            cpu_times.append(time.process_time() - self.cpu)

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch_size,
        learning_rate=t.optimizer.lr,
        weight_decay=t.optimizer.weight_decay,
        adam_beta1=t.optimizer.betas[0],
        adam_beta2=t.optimizer.betas[1],
        adam_epsilon=t.optimizer.eps,
        lr_scheduler_type=t.schedule.name,
        warmup_steps=int(t.schedule.warmup_ratio * STEPS + 0.999),
        max_grad_norm=t.max_grad_norm,
        max_steps=STEPS,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=t.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=collate,
        callbacks=[StepTimer()],
    )
    trainer.train()
    real_per_step = [c[0] for c in counts[: len(times)]]
    per_step = [r / s for r, s in zip(real_per_step[WARMUP:], times[WARMUP:], strict=True)]
    per_cpu = [r / s for r, s in zip(real_per_step[WARMUP:], cpu_times[WARMUP:], strict=True)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "real_tokens_per_s": statistics.median(per_step),
        "real_tokens_per_cpu_s": statistics.median(per_cpu),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable,
        "padding_share": 1 - sum(c[0] for c in counts) / sum(c[1] for c in counts),
        "final_loss": losses[-1],
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    import ray

    from med42ray.cluster import init_ray
    from med42ray.models import resolve_model_path

    init_ray(num_cpus=CPUS)
    work = Path(tempfile.mkdtemp(prefix="med42ray-train-bench-"))
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in mixed_length_chats(CHATS)))
    batch_size = unpacked_batch(data, experiment("full"))
    baseline = ray.remote(num_cpus=CPUS, max_calls=1)(hf_trainer_baseline)
    print(
        f"tiny Llama, {CHATS} mixed-length chats from the fixture, "
        f"{STEPS} steps, max_seq_len {SEQ}, {CPUS} CPUs; ours: {PACKED_ROWS} packed rows/step,"
        f" HF Trainer: {batch_size} padded samples/step"
    )
    header = (
        f"{'run':<22}{'real tok/s':>12}{'tok/cpu-s':>11}{'peak MB':>10}{'trainable':>12}"
        f"{'padding':>9}{'loss':>8}"
    )
    results = {}
    for strategy in ("full", "lora"):
        cfg = experiment(strategy)
        started = time.perf_counter()
        a = ours(cfg, data, work / f"ours-{strategy}")
        a["wall_s"] = time.perf_counter() - started
        started = time.perf_counter()
        b = ray.get(
            baseline.remote(
                cfg.model_dump(mode="json"), resolve_model_path(cfg.model), str(data), batch_size
            )
        )
        b["wall_s"] = time.perf_counter() - started
        results[strategy] = {"ours_packed": a, "hf_trainer_unpacked": b}
    print(header)
    for strategy, pair in results.items():
        for name, r in pair.items():
            print(
                f"{strategy + ' ' + name:<22}{r['real_tokens_per_s']:>12.0f}"
                f"{r['real_tokens_per_cpu_s']:>11.0f}{r['peak_memory_mb']:>10.0f}{r['trainable_params']:>12,}"
                f"{r['padding_share']:>9.1%}{r['final_loss']:>8.3f}"
            )
    for strategy, pair in results.items():
        a, b = pair["ours_packed"], pair["hf_trainer_unpacked"]
        ratio = a["real_tokens_per_s"] / b["real_tokens_per_s"]
        cpu_ratio = a["real_tokens_per_cpu_s"] / b["real_tokens_per_cpu_s"]
        ok = ratio >= 1.3 and a["padding_share"] < 0.05
        print(
            f"{strategy}: non-padding tokens/s ratio {ratio:.2f}x (per CPU-second "
            f"{cpu_ratio:.2f}x; target >= 1.3x), padding {a['padding_share']:.1%} vs "
            f"{b['padding_share']:.1%} (target < 5%), peak memory ratio "
            f"{a['peak_memory_mb'] / b['peak_memory_mb']:.2f}x -> {'PASS' if ok else 'MISS'}"
        )
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
