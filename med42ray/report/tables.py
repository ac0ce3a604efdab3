"""The report's tables: accuracy in the paper's layout (all items, and the clean subset), and
cost per strategy.

Inputs are plain DataFrames read from the stages' outputs, so the report can be rebuilt from
finished runs (`med42ray report RUN_DIR ...`) without rerunning anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from med42ray.benchmarks import title
from med42ray.eval.metrics import mean_of_estimates

# The paper's row order (PAPER.md), then PubMedQA, HeadQA and the average over all benchmarks.
# Group rows (MMLU clinical, USMLE) are the evaluation's own: unweighted means of their members.
# Labels are the task YAMLs' `title`s.
PAPER_ORDER = [
    "mmlu_clinical_knowledge",
    "mmlu_college_biology",
    "mmlu_college_medicine",
    "mmlu_medical_genetics",
    "mmlu_professional_medicine",
    "mmlu_anatomy",
    "mmlu_clinical",
    "medmcqa",
    "medqa",
    "usmle_self_assessment",
    "usmle_sample_exam",
    "usmle",
    "pubmedqa",
    "headqa",
]
AVERAGE = "average"
PAPER_ROWS: list[tuple[str, str]] = [
    *((name, title(name)) for name in PAPER_ORDER),
    (AVERAGE, "Average, all benchmarks"),
]
MODEL_ORDER = ["base", "full", "lora"]


def with_average(scores: pd.DataFrame) -> pd.DataFrame:
    """Add, per model, the unweighted mean over its task-level benchmarks.

    `scores` has columns model, level ("task" or "group"), benchmark, acc, stderr, n; the
    average's standard error combines the tasks' as independent estimates (as group rows do).
    """
    rows = []
    for model, frame in scores[scores["level"] == "task"].groupby("model", sort=False):
        acc, stderr = mean_of_estimates(list(frame["acc"]), list(frame["stderr"]))
        row = {"model": model, "level": "average", "benchmark": AVERAGE, "acc": acc}
        rows.append({**row, "stderr": stderr, "n": int(frame["n"].sum())})
    return pd.concat([scores, pd.DataFrame(rows)], ignore_index=True) if rows else scores


def order_models(models: Sequence[str]) -> list[str]:
    known = [m for m in MODEL_ORDER if m in models]
    return known + sorted(m for m in models if m not in MODEL_ORDER)


def paper_table(
    scores: pd.DataFrame, cell: Callable[[pd.Series], str], with_n: bool = False
) -> pd.DataFrame:
    """Wide table: one row per benchmark in the paper's order (others after, sorted), one
    `cell(row)` per model (`–` where a model has no score), and the item count when `with_n`."""
    models = order_models(list(dict.fromkeys(scores["model"])))
    known = dict(PAPER_ROWS)
    benchmarks = [b for b, _ in PAPER_ROWS if b in set(scores["benchmark"])]
    benchmarks += sorted(set(scores["benchmark"]) - set(known))
    index = scores.set_index(["benchmark", "model"])
    rows = []
    for bench in benchmarks:
        row = {"benchmark": known.get(bench, bench)}
        for model in models:
            row[model] = cell(index.loc[(bench, model)]) if (bench, model) in index.index else "–"
        if with_n:
            row["n"] = int(index.xs(bench, level="benchmark")["n"].max())
        rows.append(row)
    return pd.DataFrame(rows, columns=["benchmark", *models, *(["n"] if with_n else [])])


def accuracy_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per benchmark in the paper's order, `acc ± stderr` per model (%).

    `scores` as for :func:`with_average` (which this applies).
    """
    return paper_table(
        with_average(scores),
        lambda hit: f"{100 * hit['acc']:.1f} ± {100 * hit['stderr']:.1f}",
        with_n=True,
    )


def _pct_n(acc: float, n: int) -> str:
    return f"{'–' if pd.isna(acc) else f'{100 * acc:.1f}'} ({int(n)})"


def clean_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per benchmark in the paper's order, `all (n) / clean (n_clean)` per
    model (%). `scores` has columns model, benchmark, acc, n, acc_clean, n_clean."""
    return paper_table(
        scores,
        lambda hit: f"{_pct_n(hit['acc'], hit['n'])} / {_pct_n(hit['acc_clean'], hit['n_clean'])}",
    )


def cost_table(train: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: trainable/total parameters, peak memory, throughput, time, device-hours.

    `train` has columns strategy, trainable_params, total_params, peak_memory_gb,
    tokens_per_s, wall_s, num_workers, device ("GPU" or "CPU").
    """
    out = pd.DataFrame(
        {
            "strategy": train["strategy"],
            "trainable params": train["trainable_params"].map(lambda v: f"{int(v):,}"),
            "trainable %": (100 * train["trainable_params"] / train["total_params"]).round(2),
            "peak memory / worker (GB)": train["peak_memory_gb"].round(2),
            "train tokens/s": train["tokens_per_s"].round(1),
            "wall time (s)": train["wall_s"].round(1),
        }
    )
    hours = (train["wall_s"] * train["num_workers"] / 3600).round(4)
    out["device-hours"] = [f"{h} {d}-h" for h, d in zip(hours, train["device"], strict=True)]
    return out


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas + tabulate)."""
    return frame.to_markdown(index=False)
