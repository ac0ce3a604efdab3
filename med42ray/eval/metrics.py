"""Accuracy, its standard error, and the summary table (tasks, subsets, groups)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from med42ray.benchmarks import load_task, task_groups


def predict(lls: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """lm-eval's multiple-choice decision: ``acc`` argmax of the summed log-likelihoods,
    ``acc_norm`` argmax of log-likelihood / len(choice) in characters."""
    lls_arr = np.asarray(lls, dtype=float)
    lengths = np.asarray([float(len(c)) for c in choices])
    return int(np.argmax(lls_arr)), int(np.argmax(lls_arr / lengths))


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation / sqrt(n); for 0/1 values
    ``sqrt(p (1 - p) / (n - 1))``. NaN for fewer than two values."""
    n = len(values)
    if n < 2:
        return float("nan")
    return float(np.std(np.asarray(values, dtype=float), ddof=1) / math.sqrt(n))


def _row(frame: pd.DataFrame) -> dict[str, float]:
    row = {
        "n": len(frame),
        "acc": float(frame["correct"].mean()),
        "acc_stderr": mean_stderr(frame["correct"].astype(float).tolist()),
        "acc_norm": float(frame["correct_norm"].mean()),
        "acc_norm_stderr": mean_stderr(frame["correct_norm"].astype(float).tolist()),
    }
    row["unparsed"] = (
        float((~frame["parsed"]).mean())
        if "parsed" in frame and frame["parsed"].notna().all()
        else float("nan")
    )
    return {**row, **clean_row(frame)}


def clean_row(frame: pd.DataFrame) -> dict[str, float]:
    """`n_clean`, `acc_clean`, `acc_clean_stderr` over the items with `clean` True (every item
    when there is no such column); NaN accuracy when none is clean."""
    clean = frame[frame["clean"].astype(bool)] if "clean" in frame else frame
    correct = clean["correct"].astype(float).tolist()
    return {
        "n_clean": len(clean),
        "acc_clean": float(np.mean(correct)) if correct else float("nan"),
        "acc_clean_stderr": mean_stderr(correct),
    }


def group_clean_row(present: Sequence[dict[str, object]]) -> dict[str, float]:
    """A group's clean columns: the unweighted mean of its members' (NaN when one has no clean
    item), its standard error combined as for `acc`."""
    acc, stderr = mean_of_estimates(
        [float(p["acc_clean"]) for p in present], [float(p["acc_clean_stderr"]) for p in present]
    )
    return {
        "n_clean": int(sum(int(p["n_clean"]) for p in present)),
        "acc_clean": acc,
        "acc_clean_stderr": stderr,
    }


SUMMARY_COLUMNS = [
    "model", "engine", "scoring", "level", "benchmark", "subset", "prompt_format",
    "prompt_version", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "unparsed",
    "compute_s", "wall_s", "n_clean", "acc_clean", "acc_clean_stderr",
]  # fmt: skip


def mean_of_estimates(accs: Sequence[float], stderrs: Sequence[float]) -> tuple[float, float]:
    """Unweighted mean of k accuracies and its standard error, sqrt(sum se_i^2) / k."""
    k = len(accs)
    return float(np.mean(accs)), math.sqrt(sum(float(se) ** 2 for se in stderrs)) / k


def summarise(predictions: pd.DataFrame, run: dict[str, object]) -> pd.DataFrame:
    """One row per benchmark, per subset (USMLE step, MedMCQA subject..), per group.

    A group's accuracy is the unweighted mean of its members (the paper's "MMLU clinical" and
    "USMLE" rows); its standard error combines the members' as independent estimates,
    ``sqrt(sum se_i^2) / k``. Groups appear when at least one member was evaluated; `n` is
    the members' item total and `subset` lists the members present.
    """
    rows: list[dict[str, object]] = []
    per_task: dict[str, dict[str, object]] = {}
    for task, frame in predictions.groupby("benchmark", sort=False):
        first = frame.iloc[0]
        base = {
            **run,
            "benchmark": task,
            "prompt_format": first["prompt_format"],
            "prompt_version": first["prompt_version"],
            "compute_s": float(frame["compute_s"].sum()),
        }
        row = {**base, "level": "task", "subset": "", **_row(frame)}
        rows.append(row)
        per_task[str(task)] = row
        subsets = frame["subset"].fillna("")
        if subsets.nunique() > 1 or (subsets != "").any():
            for subset, part in frame.groupby(subsets, sort=True):
                rows.append({**base, "level": "subset", "subset": subset, **_row(part)})
    for group, members in task_groups().items():
        present = [per_task[m] for m in members if m in per_task]
        if not present:
            continue
        acc, acc_se = mean_of_estimates(
            [p["acc"] for p in present], [p["acc_stderr"] for p in present]
        )
        norm, norm_se = mean_of_estimates(
            [p["acc_norm"] for p in present], [p["acc_norm_stderr"] for p in present]
        )
        rows.append(
            {
                **run,
                "level": "group",
                "benchmark": group,
                "subset": ",".join(str(p["benchmark"]) for p in present),
                "prompt_format": "",
                "prompt_version": "",
                "n": int(sum(int(p["n"]) for p in present)),
                "acc": acc,
                "acc_stderr": acc_se,
                "acc_norm": norm,
                "acc_norm_stderr": norm_se,
                "unparsed": float(np.mean([p["unparsed"] for p in present])),
                "compute_s": float(sum(float(p["compute_s"]) for p in present)),
                **group_clean_row(present),
            }
        )
    summary = pd.DataFrame(rows)
    for col in SUMMARY_COLUMNS:
        if col not in summary:
            summary[col] = np.nan
    return summary[SUMMARY_COLUMNS]


def uses_acc_norm(task: str) -> bool:
    return "acc_norm" in load_task(task).metric_list


def to_markdown(summary: pd.DataFrame) -> str:
    """A plain Markdown table (no extra dependency), percentages with one decimal."""
    cols = ["level", "benchmark", "subset", "n", "acc", "acc_stderr", "acc_norm", "unparsed"]
    head = summary.iloc[0] if len(summary) else None
    lines = []
    if head is not None:
        lines.append(
            f"model `{head['model']}`, engine `{head['engine']}`, scoring `{head['scoring']}`, "
            f"wall time {float(head['wall_s']):.1f}s\n"
        )
    lines.append("| " + " | ".join([*cols, "prompt"]) + " |")
    lines.append("|" + "---|" * (len(cols) + 1))

    def pct(x: object) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"

    for _, r in summary.iterrows():
        acc_norm = r["acc_norm"] if r["level"] == "group" or uses_acc_norm(r["benchmark"]) else None
        cells = [
            r["level"], r["benchmark"], r["subset"], str(int(r["n"])), pct(r["acc"]),
            pct(r["acc_stderr"]), pct(acc_norm), pct(r["unparsed"]),
            f"{r['prompt_format']}@{r['prompt_version']}" if r["prompt_version"] else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
