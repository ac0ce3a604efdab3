"""Accuracy, its standard error, the summary table (protocols, tasks, subsets, groups) and the
agreement between protocols."""

from __future__ import annotations

import itertools
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


def group_clean_row(present: Sequence[dict[str, object]], weighted: bool) -> dict[str, float]:
    """A group's clean columns: its members' clean accuracies combined as the group combines
    `acc` (unweighted, or weighted by the clean items; NaN unweighted when one has none)."""
    accs = [float(p["acc_clean"]) for p in present]
    stderrs = [float(p["acc_clean_stderr"]) for p in present]
    sizes = [int(p["n_clean"]) for p in present]
    acc, stderr = (
        size_weighted_mean(accs, stderrs, sizes) if weighted else mean_of_estimates(accs, stderrs)
    )
    return {"n_clean": sum(sizes), "acc_clean": acc, "acc_clean_stderr": stderr}


SUMMARY_COLUMNS = [
    "model", "engine", "protocol", "scoring", "level", "benchmark", "subset", "prompt_format",
    "prompt_version", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "unparsed",
    "compute_s", "wall_s", "n_clean", "acc_clean", "acc_clean_stderr",
]  # fmt: skip
WEIGHTED = "_weighted"
"""Suffix of a group's size-weighted row (`mmlu_clinical_weighted`)."""
ALL_ITEMS = "all"
"""The agreement table's row pooling every benchmark's items."""


def mean_of_estimates(accs: Sequence[float], stderrs: Sequence[float]) -> tuple[float, float]:
    """Unweighted mean of k accuracies and its standard error, sqrt(sum se_i^2) / k."""
    k = len(accs)
    return float(np.mean(accs)), math.sqrt(sum(float(se) ** 2 for se in stderrs)) / k


def size_weighted_mean(
    accs: Sequence[float], stderrs: Sequence[float], sizes: Sequence[int]
) -> tuple[float, float]:
    """lm-eval's `weight_by_size` group mean (``multimedqa``'s) and its `pooled_sample_stderr`.

    Members without items weigh nothing; NaN when the members hold fewer than two items."""
    kept = [(a, se, n) for a, se, n in zip(accs, stderrs, sizes, strict=True) if n > 0]
    total = sum(n for _, _, n in kept)
    if total - len(kept) <= 0:
        return (kept[0][0] if total == 1 else float("nan")), float("nan")
    acc = sum(a * n for a, _, n in kept) / total
    pooled = sum((n - 1) * se**2 * n for _, se, n in kept if n > 1) / (total - len(kept))
    return float(acc), math.sqrt(pooled / total)


def _group_row(
    run: dict[str, object], group: str, present: Sequence[dict[str, object]], weighted: bool
) -> dict[str, object]:
    """One group row: the members' accuracies combined, unweighted (the paper's) or weighted by
    their item counts (lm-eval's `weight_by_size`, benchmark name `<group>_weighted`)."""
    sizes = [int(p["n"]) for p in present]

    def combine(metric: str) -> tuple[float, float]:
        values = [float(p[metric]) for p in present]
        stderrs = [float(p[f"{metric}_stderr"]) for p in present]
        if weighted:
            return size_weighted_mean(values, stderrs, sizes)
        return mean_of_estimates(values, stderrs)

    (acc, acc_se), (norm, norm_se) = combine("acc"), combine("acc_norm")
    unparsed = [float(p["unparsed"]) for p in present]
    return {
        **run,
        "level": "group",
        "benchmark": group + (WEIGHTED if weighted else ""),
        "subset": ",".join(str(p["benchmark"]) for p in present),
        "prompt_format": "",
        "prompt_version": "",
        "n": sum(sizes),
        "acc": acc,
        "acc_stderr": acc_se,
        "acc_norm": norm,
        "acc_norm_stderr": norm_se,
        "unparsed": float(np.average(unparsed, weights=sizes) if weighted else np.mean(unparsed)),
        "compute_s": float(sum(float(p["compute_s"]) for p in present)),
        **group_clean_row(present, weighted),
    }


def _summarise_protocol(predictions: pd.DataFrame, run: dict[str, object]) -> list[dict]:
    """The task, subset and group rows of one protocol's predictions."""
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
        if present:
            rows += [_group_row(run, group, present, weighted) for weighted in (False, True)]
    return rows


def summarise(predictions: pd.DataFrame, run: dict[str, object]) -> pd.DataFrame:
    """One row per protocol and benchmark, subset (USMLE step, MedMCQA subject..) and group.

    A group has two rows: the unweighted mean of its members (the paper's "MMLU clinical" and
    "USMLE"), its standard error combining the members' as independent estimates,
    ``sqrt(sum se_i^2) / k``; and `<group>_weighted`, the mean weighted by the members' item
    counts with lm-eval's pooled standard error (its `weight_by_size`, as `multimedqa`
    aggregates). Groups appear when at least one member was evaluated; `n` is the members'
    item total and `subset` lists the members present. The `protocol` and `scoring` columns
    come from the predictions' (a single unnamed protocol without them).
    """
    rows: list[dict[str, object]] = []
    named = "protocol" in predictions
    keys = predictions["protocol"] if named else pd.Series("", index=predictions.index)
    for protocol, frame in predictions.groupby(keys, sort=False):
        extra = {"protocol": protocol, "scoring": frame["scoring"].iloc[0]} if named else {}
        rows += _summarise_protocol(frame, {**run, **extra})
    summary = pd.DataFrame(rows)
    for col in SUMMARY_COLUMNS:
        if col not in summary:
            summary[col] = np.nan
    return summary[SUMMARY_COLUMNS]


def agreement(predictions: pd.DataFrame) -> pd.DataFrame:
    """How often two protocols pick the same option: per benchmark (and `all` items pooled) and
    pair of protocols, the items both scored (`n`) and the share with equal predictions
    (`agree`; an unparsed generation agrees with nothing). Empty with fewer than two protocols.
    """
    columns = ["benchmark", "protocol_a", "protocol_b", "n", "agree"]
    if "protocol" not in predictions or predictions["protocol"].nunique() < 2:
        return pd.DataFrame(columns=columns)
    protocols = list(dict.fromkeys(predictions["protocol"]))
    benchmarks = list(dict.fromkeys(predictions["benchmark"]))
    wide = predictions.pivot_table(
        index=["benchmark", "item_id"], columns="protocol", values="pred", aggfunc="first"
    )
    rows = []
    for a, b in itertools.combinations(protocols, 2):
        both = wide[[a, b]].dropna()
        same = ((both[a] == both[b]) & (both[a] >= 0)).astype(float)
        by_bench = same.groupby(level="benchmark")
        for bench in benchmarks:
            if bench in by_bench.groups:
                part = by_bench.get_group(bench)
                rows.append([bench, a, b, len(part), float(part.mean())])
        rows.append([ALL_ITEMS, a, b, len(same), float(same.mean())])
    return pd.DataFrame(rows, columns=columns)


def uses_acc_norm(task: str) -> bool:
    return "acc_norm" in load_task(task).metric_list


def to_markdown(summary: pd.DataFrame) -> str:
    """A plain Markdown table (no extra dependency), percentages with one decimal."""
    cols = ["protocol", "level", "benchmark", "subset", "n", "acc", "acc_stderr", "acc_norm",
            "unparsed"]  # fmt: skip
    head = summary.iloc[0] if len(summary) else None
    lines = []
    if head is not None:
        protocols = ", ".join(
            f"`{p}` ({s})"
            for p, s in dict(zip(summary["protocol"], summary["scoring"], strict=True)).items()
        )
        lines.append(
            f"model `{head['model']}`, engine `{head['engine']}`, protocols {protocols}, "
            f"wall time {float(head['wall_s']):.1f}s\n"
        )
    lines.append("| " + " | ".join([*cols, "prompt"]) + " |")
    lines.append("|" + "---|" * (len(cols) + 1))

    def pct(x: object) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"

    for _, r in summary.iterrows():
        acc_norm = r["acc_norm"] if r["level"] == "group" or uses_acc_norm(r["benchmark"]) else None
        cells = [
            r["protocol"], r["level"], r["benchmark"], r["subset"], str(int(r["n"])),
            pct(r["acc"]), pct(r["acc_stderr"]), pct(acc_norm), pct(r["unparsed"]),
            f"{r['prompt_format']}@{r['prompt_version']}" if r["prompt_version"] else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
