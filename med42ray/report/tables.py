"""The report's tables: accuracy in the paper's layout (all items, and the clean subset), one
column per protocol and model, the agreement between protocols, and cost per strategy.

Inputs are plain DataFrames read from the stages' outputs, so the report can be rebuilt from
finished runs (`med42ray report RUN_DIR ...`) without rerunning anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from med42ray.benchmarks import title
from med42ray.eval.metrics import ALL_ITEMS, WEIGHTED, mean_of_estimates

# The paper's row order (PAPER.md), then PubMedQA, HeadQA and the average over all benchmarks.
# Group rows (MMLU clinical, USMLE) are the evaluation's own: unweighted means of their members
# (the paper's), each followed by its size-weighted mean (lm-eval's `weight_by_size`, as its
# `multimedqa` group aggregates). Labels are the task YAMLs' `title`s.
PAPER_ORDER = [
    "mmlu_clinical_knowledge",
    "mmlu_college_biology",
    "mmlu_college_medicine",
    "mmlu_medical_genetics",
    "mmlu_professional_medicine",
    "mmlu_anatomy",
    "mmlu_clinical",
    "mmlu_clinical" + WEIGHTED,
    "medmcqa",
    "medqa",
    "usmle_self_assessment",
    "usmle_sample_exam",
    "usmle",
    "usmle" + WEIGHTED,
    "pubmedqa",
    "headqa",
]
AVERAGE = "average"


def row_title(name: str) -> str:
    """A row's label: the task's or group's title; a group's size-weighted row says so."""
    group = name.removesuffix(WEIGHTED)
    if group == name:
        return title(name)
    return f"{title(group).split(',')[0]}, size-weighted (as lm-eval's multimedqa)"


PAPER_ROWS: list[tuple[str, str]] = [
    *((name, row_title(name)) for name in PAPER_ORDER),
    (AVERAGE, "Average, all benchmarks"),
]
MODEL_ORDER = ["base", "full", "lora"]


def with_protocol(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a `protocol` column: scores from before protocols are named by their
    scoring mode (`scoring`)."""
    if "protocol" not in frame:
        frame = frame.assign(protocol=frame.get("scoring", ""))
    return frame


def protocols_of(scores: pd.DataFrame) -> list[str]:
    """The protocols in `scores` (a `protocol` column), in order of appearance."""
    return list(dict.fromkeys(scores["protocol"])) if "protocol" in scores else [""]


def with_columns(scores: pd.DataFrame) -> pd.DataFrame:
    """`scores` with `column`: the model, or `protocol: model` when there are several protocols
    (the report's column groups: one per protocol, its models side by side)."""
    several = len(protocols_of(scores)) > 1
    column = scores["protocol"] + ": " + scores["model"] if several else scores["model"]
    return scores.assign(column=column)


def column_order(scores: pd.DataFrame) -> list[str]:
    """The `column` labels protocol by protocol, each protocol's models in `order_models`."""
    frame = with_columns(scores)
    labels = []
    for protocol in protocols_of(frame):
        part = frame[frame["protocol"] == protocol] if "protocol" in frame else frame
        by_model = dict(zip(part["model"], part["column"], strict=True))
        labels += [by_model[m] for m in order_models(list(by_model))]
    return labels


def with_average(scores: pd.DataFrame) -> pd.DataFrame:
    """Add, per model (and protocol), the unweighted mean over its task-level benchmarks.

    `scores` has columns model, level ("task" or "group"), benchmark, acc, stderr, n (and
    protocol); the average's standard error combines the tasks' as independent estimates (as
    group rows do).
    """
    keys = ["model", "protocol"] if "protocol" in scores else ["model"]
    rows = []
    for key, frame in scores[scores["level"] == "task"].groupby(keys, sort=False):
        acc, stderr = mean_of_estimates(list(frame["acc"]), list(frame["stderr"]))
        row = {**dict(zip(keys, key, strict=True)), "level": "average", "benchmark": AVERAGE}
        rows.append({**row, "acc": acc, "stderr": stderr, "n": int(frame["n"].sum())})
    return pd.concat([scores, pd.DataFrame(rows)], ignore_index=True) if rows else scores


def order_models(models: Sequence[str]) -> list[str]:
    known = [m for m in MODEL_ORDER if m in models]
    return known + sorted(m for m in models if m not in MODEL_ORDER)


def ordered_benchmarks(names: Sequence[str]) -> list[str]:
    """`names` in the paper's row order, the others after, sorted."""
    known = dict(PAPER_ROWS)
    return [b for b, _ in PAPER_ROWS if b in set(names)] + sorted(set(names) - set(known))


def paper_table(
    scores: pd.DataFrame, cell: Callable[[pd.Series], str], with_n: bool = False
) -> pd.DataFrame:
    """Wide table: one row per benchmark in the paper's order (others after, sorted), one
    `cell(row)` per protocol and model (`with_columns`; `–` where there is no score), and the
    item count when `with_n`."""
    columns = column_order(scores)
    known = dict(PAPER_ROWS)
    index = with_columns(scores).set_index(["benchmark", "column"])
    rows = []
    for bench in ordered_benchmarks(list(scores["benchmark"])):
        row = {"benchmark": known.get(bench, bench)}
        for col in columns:
            row[col] = cell(index.loc[(bench, col)]) if (bench, col) in index.index else "–"
        if with_n:
            row["n"] = int(index.xs(bench, level="benchmark")["n"].max())
        rows.append(row)
    return pd.DataFrame(rows, columns=["benchmark", *columns, *(["n"] if with_n else [])])


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


def agreement_table(agreement: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per benchmark in the paper's order, then every item pooled; one
    column per pair of protocols, its cell the share of items (%) where the two pick the same
    option, for each model in `order_models` (`base / full / lora`).

    `agreement` has columns model, benchmark, protocol_a, protocol_b, n, agree."""
    if not len(agreement):
        return pd.DataFrame(columns=["benchmark"])
    frame = agreement.assign(pair=agreement["protocol_a"] + " ~ " + agreement["protocol_b"])
    models = order_models(list(dict.fromkeys(frame["model"])))
    pairs = list(dict.fromkeys(frame["pair"]))
    index = frame.set_index(["benchmark", "pair", "model"])
    known = {**dict(PAPER_ROWS), ALL_ITEMS: "All benchmarks (items pooled)"}
    names = [b for b in ordered_benchmarks(list(frame["benchmark"])) if b != ALL_ITEMS]
    rows = []
    for bench in [*names, ALL_ITEMS]:
        row = {"benchmark": known.get(bench, bench)}
        for pair in pairs:
            cells = [
                f"{100 * index.loc[(bench, pair, m), 'agree']:.0f}"
                if (bench, pair, m) in index.index
                else "–"
                for m in models
            ]
            row[pair] = " / ".join(cells)
        row["n"] = int(index.xs(bench, level="benchmark")["n"].max())
        rows.append(row)
    return pd.DataFrame(rows, columns=["benchmark", *pairs, "n"])


def cost_table(train: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: trainable/total parameters, peak memory, throughput, time, device-hours.

    `train` has columns strategy, trainable_params, total_params, peak_memory_gb,
    tokens_per_s, wall_s, num_workers, device ("GPU" or "CPU") and optionally
    devices_per_worker (GPUs per worker; 1 when absent).
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
    hours = device_hours(train).round(4)
    out["device-hours"] = [f"{h} {d}-h" for h, d in zip(hours, train["device"], strict=True)]
    return out


def device_hours(train: pd.DataFrame) -> pd.Series:
    """Wall time x workers x devices per worker, in hours, per row of the cost figures."""
    per_worker = train["devices_per_worker"].fillna(1) if "devices_per_worker" in train else 1
    return train["wall_s"] * train["num_workers"] * per_worker / 3600


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas + tabulate)."""
    return frame.to_markdown(index=False)
