"""The full MedQA test on one GPU: our vLLM actors vs lm-eval's vLLM and HF backends.

Scores MedQA's 1,273 test items x 4 options (lm-eval's ``medqa_4options`` prompt, letter
log-likelihood, zero-shot) with a 1B-class model three ways and prints items/s and the per-item
agreement of predictions and log-likelihoods:

* ``ours``: ``run_eval`` with ``eval.engine: vllm`` (a Ray actor holding our :class:`VLLMEngine`:
  one prefill per question, prefix caching, the batch in one ``generate``);
* ``lm_eval_vllm``: ``lm_eval.simple_evaluate`` with its ``vllm`` backend (a prefill per option);
* ``lm_eval_hf``: the same with its ``hf`` backend (``--hf-batch-size``).

Each backend runs in a child process of its own, so each starts with a free GPU, and is timed
from building its model to its last prediction (libraries imported first). Not part of CI.

    # on a CUDA machine (.venv from `MED42RAY_TARGET=gpu bash scripts/setup_venv.sh`):
    python perf/gpu_eval.py --medqa phrases_no_exclude_test.jsonl --model /models/Llama-3.2-1B \\
        --json outputs/gpu_eval.json
    # anywhere, end to end on the tiny model and a few items:
    python perf/gpu_eval.py --tiny --json /tmp/gpu_eval_tiny.json

``--medqa`` takes any MedQA form our loader reads (jind11's JSON lines, the hub schemas); without
it the MedQA-schema fixture (``tests/fixtures/benchmarks/medqa_hf.jsonl``) is repeated to 1,273
items (synthetic load, real schema). ``--model`` is a local HF folder (safetensors); without it
a randomly initialised Llama of 1.2B parameters (Llama-3.2-1B's shape, bfloat16 on GPU) is
built in code with the tiny model's tokenizer: the speed is the model's, the accuracy chance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_bench import TASK_YAML  # noqa: E402 - the CPU bench's lm-eval task, one copy

FIXTURE = REPO / "tests" / "fixtures" / "benchmarks" / "medqa_hf.jsonl"
TASK = "med42_gpu_medqa"
#: Llama-3.2-1B's shape (tied embeddings), for the random-weight stand-in.
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True,
            "max_position_embeddings": 4096, "rope_theta": 500000.0}  # fmt: skip


# ---------------------------------------------------------------------------------- inputs
def write_items(medqa: str | None, n: int, out: Path) -> Path:
    """The items as MedQA `-hf` JSON lines (what lm-eval's task and our loader both read)."""
    from med42ray.benchmarks import load_benchmark

    items = load_benchmark("medqa", medqa or str(FIXTURE))
    rows = []
    for i in range(n if not medqa else len(items)):
        item = items[i % len(items)]
        rows.append({"id": f"{item.id}-{i}", "sent1": item.question, "sent2": "",
                     **{f"ending{j}": c for j, c in enumerate(item.choices)},
                     "label": item.gold})  # fmt: skip
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def build_model(tiny: bool, workdir: Path, cuda: bool) -> str:
    """The tiny model (``--tiny``), else a random 1.2B Llama saved as safetensors."""
    from med42ray.config import load_config
    from med42ray.models import resolve_model_path

    cfg = load_config(REPO / "configs/tiny.yaml", {"model.tiny.pretrain": None})
    tiny_path = resolve_model_path(cfg.model)
    if tiny:
        return tiny_path
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = workdir / "llama-1b-random"
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **LLAMA_1B)  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


# -------------------------------------------------------------------------------- backends
def run_ours(model: str, data: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``run_eval`` with the vLLM engine in a Ray actor (one GPU on a GPU machine)."""
    import pandas as pd

    from med42ray.config import load_config
    from med42ray.eval import run_eval

    cuda = _cuda()
    overrides = {
        "model.name_or_path": model,
        "model.dtype": "auto",
        "eval.engine": "vllm",
        "eval.benchmarks": [{"name": "medqa", "path": str(data)}],
        "eval.protocols": [{"scoring": "loglikelihood", "prompt_format": "multiple_choice"}],
        "eval.batch_size": args.batch_size,
        "eval.max_model_len": args.max_model_len,
        "eval.gpus_per_actor": 1 if cuda else 0,
        "resources.use_gpu": cuda,
    }
    cfg = load_config(REPO / "configs/tiny.yaml", overrides)
    start = time.perf_counter()
    run_eval(cfg, out / "ours", label="ours")
    seconds = time.perf_counter() - start
    preds = pd.read_parquet(out / "ours" / "predictions.parquet")
    return {"seconds": seconds, "compute_s": float(preds["compute_s"].sum()),
            "preds": [int(p) for p in preds["pred"]],
            "lls": [[float(x) for x in ll] for ll in preds["loglikelihoods"]]}  # fmt: skip


def run_lm_eval(backend: str, model: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """lm-eval's `backend` (``vllm`` or ``hf``) on the same items, through ``simple_evaluate``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_dir = data.parent / "tasks"
    task_dir.mkdir(exist_ok=True)
    (task_dir / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, path=data))
    cuda = _cuda()
    if backend == "vllm":
        model_args = {"pretrained": model, "dtype": "auto", "max_model_len": args.max_model_len,
                      "gpu_memory_utilization": 0.85}  # fmt: skip
        if not cuda:
            model_args["enforce_eager"] = True
        batch: int | str = "auto"
    else:
        model_args = {"pretrained": model, "dtype": "auto", "device": "cuda" if cuda else "cpu"}
        batch = args.hf_batch_size
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(model=backend, model_args=model_args, tasks=[TASK],
                                      task_manager=TaskManager(include_path=str(task_dir)),
                                      batch_size=batch, log_samples=True)  # fmt: skip
    seconds = time.perf_counter() - start
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    preds = [max(range(len(x)), key=x.__getitem__) for x in lls]
    return {"seconds": seconds, "preds": preds, "lls": lls}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


#: What each backend imports before its clock starts (imports are not engine speed).
IMPORTS = {
    "ours": ["torch", "transformers", "ray", "vllm", "med42ray.eval.engines"],
    "lm_eval_vllm": ["torch", "transformers", "vllm", "lm_eval.models.vllm_causallms"],
    "lm_eval_hf": ["torch", "transformers", "lm_eval.models.huggingface"],
}


def child(args: argparse.Namespace) -> None:
    """One backend, in this (child) process: its figures as JSON into ``--result``."""
    import importlib

    for module in IMPORTS[args.backend]:
        importlib.import_module(module)
    if args.backend == "ours":
        result = run_ours(args.model_path, Path(args.data), args, Path(args.workdir))
    else:
        backend = args.backend.removeprefix("lm_eval_")
        result = run_lm_eval(backend, args.model_path, Path(args.data), args)
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------ main
def spawn(backend: str, model: str, data: Path, workdir: Path, args: argparse.Namespace) -> dict:
    """Run `backend` in a child process; its figures, or its error."""
    result = workdir / f"{backend}.json"
    cmd = [sys.executable, __file__, "--child", backend, "--model-path", model, "--data",
           str(data), "--workdir", str(workdir), "--result", str(result), "--batch-size",
           str(args.batch_size), "--hf-batch-size", str(args.hf_batch_size),
           "--max-model-len", str(args.max_model_len)]  # fmt: skip
    env = dict(os.environ)
    if backend == "lm_eval_vllm" and not _cuda():
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as our engine does on CPU
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0 or not result.exists():
        return {"error": proc.stderr[-3000:]}
    return json.loads(result.read_text())


def summarise(runs: dict[str, dict], n: int) -> dict[str, Any]:
    """items/s per backend, and agreement with ours (identical predictions, max |dLL|)."""
    ours = runs["ours"]
    table: dict[str, Any] = {}
    for name, r in runs.items():
        if "error" in r:
            table[name] = {"error": r["error"].strip().splitlines()[-1:]}
            continue
        row = {"seconds": round(r["seconds"], 2), "items_per_s": n / r["seconds"]}
        if name != "ours" and "error" not in ours:
            row["identical_predictions_vs_ours"] = (
                sum(a == b for a, b in zip(r["preds"], ours["preds"], strict=True)) / n
            )
            row["max_abs_loglikelihood_diff_vs_ours"] = max(
                abs(a - b) for x, y in zip(r["lls"], ours["lls"], strict=True)
                for a, b in zip(x, y, strict=True)
            )  # fmt: skip
        table[name] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--medqa", help="MedQA test file (any form our loader reads)")
    parser.add_argument("--model", help="local HF model folder (default: a random 1.2B Llama)")
    parser.add_argument("--tiny", action="store_true", help="tiny model, --items items: a CPU run")
    parser.add_argument("--items", type=int, default=None, help="default 1273 (20 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=512, help="our items per actor batch")
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--backends", default="ours,lm_eval_vllm,lm_eval_hf")
    parser.add_argument("--json", type=Path, help="write the figures here")
    for hidden in ("--child", "--model-path", "--data", "--workdir", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.backend = args.child
        child(args)
        return

    workdir = Path(tempfile.mkdtemp(prefix="med42ray-gpu-eval-"))
    n_wanted = args.items or (20 if args.tiny else 1273)
    if args.tiny:
        args.max_model_len = min(args.max_model_len, 1024)
    data = write_items(args.medqa, n_wanted, workdir / "medqa_hf.jsonl")
    n = sum(1 for _ in data.open())
    model = args.model or build_model(args.tiny, workdir, _cuda())
    print(f"{n} MedQA items x 4 options, model {model}, cuda {_cuda()}, workdir {workdir}")
    runs = {}
    for backend in args.backends.split(","):
        runs[backend] = spawn(backend, model, data, workdir, args)
        r = runs[backend]
        line = "failed: " + r["error"].strip().splitlines()[-1] if "error" in r else (
            f"{r['seconds']:8.2f}s  {n / r['seconds']:8.1f} items/s")  # fmt: skip
        print(f"{backend:<13}: {line}")
    table = summarise(runs, n)
    for name, row in table.items():
        if "identical_predictions_vs_ours" in row:
            same = 100 * row["identical_predictions_vs_ours"]
            diff = row["max_abs_loglikelihood_diff_vs_ours"]
            print(f"{name:<13}: identical predictions {same:.1f}%, max |dLL| {diff:.1e}")
    ok = {k: v for k, v in table.items() if "items_per_s" in v}
    ratios = {f"ours_vs_{k}": ok["ours"]["items_per_s"] / v["items_per_s"]
              for k, v in ok.items() if k != "ours" and "ours" in ok}  # fmt: skip
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"items": n, "model": model, "tiny": args.tiny,
                                         "medqa": args.medqa, "cuda": _cuda(), "runs": table,
                                         "ratios": ratios}, indent=2) + "\n")  # fmt: skip
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
