"""Throughput and agreement: our Transformers engine vs lm-evaluation-harness, same items.

Scores the tiny model on a few hundred synthetic MedQA items (the `-hf` schema lm-eval reads,
in a local JSON file) with med42ray's HF engine and with ``lm_eval.simple_evaluate`` on a local
task YAML that renders lm-eval's own ``medqa_4options`` prompt; prints items/s for each, the
ratio, and the per-item agreement of predictions (lm-eval's ``log_samples``).

    .venv/bin/python perf/eval_bench.py [--items 300] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

WORDS = [
    "patient",
    "presents",
    "fever",
    "cough",
    "chest",
    "pain",
    "dyspnea",
    "hypertension",
    "diabetes",
    "renal",
    "hepatic",
    "acute",
    "chronic",
    "infection",
    "antibiotic",
    "therapy",
    "diagnosis",
    "murmur",
    "anemia",
    "thyroid",
    "insulin",
    "cardiac",
    "pulmonary",
    "emergency",
    "examination",
    "laboratory",
    "serum",
    "elevated",
    "decreased",
    "history",
    "weeks",
    "year",
    "old",
    "man",
    "woman",
    "child",
    "pregnant",
    "treatment",
    "management",
    "likely",
    "cause",
    "mechanism",
    "drug",
    "dose",
]
DRUGS = [
    "Nitrofurantoin",
    "Ceftriaxone",
    "Doxycycline",
    "Ampicillin",
    "Metformin",
    "Insulin",
    "Propranolol",
    "Aspirin",
    "Heparin",
    "Warfarin",
    "Levothyroxine",
    "Methimazole",
    "Prednisone",
    "Furosemide",
    "Lisinopril",
    "Amoxicillin",
]

TASK_YAML = """task: med42_bench_medqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{sent1}}}}\\nA. {{{{ending0}}}}\\nB. {{{{ending1}}}}\\nC. {{{{ending2}}}}\\nD. {{{{ending3}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: ["A", "B", "C", "D"]
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
"""  # noqa: E501 - lm-eval's medqa_4options prompt as one Jinja line


def synthetic_items(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 90)))
        options = rng.sample(DRUGS, 4)
        rows.append(
            {"id": f"q{i:04d}", "sent1": question.capitalize() + "?", "sent2": "",
             **{f"ending{j}": o for j, o in enumerate(options)}, "label": rng.randrange(4)}
        )  # fmt: skip
    return rows


def run_ours(cfg, model_path: str, data: Path) -> tuple[float, list[int]]:
    from med42ray.benchmarks import load_benchmark, load_task
    from med42ray.eval.engines import HFEngine, encode_pairs
    from med42ray.eval.metrics import predict
    from med42ray.eval.prompts import PromptFormat

    start = time.perf_counter()
    engine = HFEngine(model_path, cfg.model, cfg.eval)
    fmt = PromptFormat(load_task("medqa"))
    prompts = [fmt.render(i) for i in load_benchmark("medqa", str(data))]
    pairs = [(p.context, c) for p in prompts for c in p.continuations]
    scores = engine.loglikelihood_tokens(encode_pairs(engine.tokenizer, pairs))
    preds = [predict(scores[4 * k : 4 * k + 4], p.choices)[0] for k, p in enumerate(prompts)]
    return time.perf_counter() - start, preds


def run_lm_eval(model_path: str, task_dir: Path, batch_size: int) -> tuple[float, list[int]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_path},dtype=float32",
        tasks=["med42_bench_medqa"],
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=batch_size,
        device="cpu",
        log_samples=True,
    )
    seconds = time.perf_counter() - start
    samples = sorted(results["samples"]["med42_bench_medqa"], key=lambda s: s["doc_id"])
    preds = [max(range(4), key=lambda j, s=s: s["filtered_resps"][j][0]) for s in samples]
    return seconds, preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs/tiny.yaml"))
    args = parser.parse_args()

    import torch

    from med42ray.config import load_config
    from med42ray.models import resolve_model_path

    cfg = load_config(args.config, {"eval.batch_size": args.batch_size})
    model_path = resolve_model_path(cfg.model)
    workdir = Path(tempfile.mkdtemp(prefix="med42ray-eval-bench-"))
    data = workdir / "medqa_hf.json"
    data.write_text("\n".join(json.dumps(r) for r in synthetic_items(args.items)) + "\n")
    (workdir / "tasks").mkdir()
    (workdir / "tasks" / "med42_bench_medqa.yaml").write_text(TASK_YAML.format(path=data))

    print(f"model {model_path}, {args.items} items x 4 options, torch threads "
          f"{torch.get_num_threads()}, batch size {args.batch_size}")  # fmt: skip
    ours_s, ours = run_ours(cfg, model_path, data)
    runs = {}
    for bs in (1, args.batch_size):
        runs[bs] = run_lm_eval(model_path, workdir / "tasks", bs)
    n = args.items
    print(f"med42ray hf engine      : {ours_s:7.2f}s  {n / ours_s:8.1f} items/s")
    for bs, (secs, preds) in runs.items():
        agree = sum(a == b for a, b in zip(ours, preds, strict=True)) / n
        print(
            f"lm-eval hf, batch {bs:<5}: {secs:7.2f}s  {n / secs:8.1f} items/s   "
            f"speed-up {secs / ours_s:5.2f}x   identical predictions {100 * agree:.1f}%"
        )


if __name__ == "__main__":
    main()
