"""The comparison the study is about: full fine-tuning vs LoRA (and each vs the base model),
paired on the same items, its headline sentence generated from those numbers, and what each
accuracy point gained over the base model cost in device-hours."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from med42ray.benchmarks import task_groups
from med42ray.report.paired import LEVEL, RESAMPLES, paired_differences
from med42ray.report.tables import (
    AVERAGE,
    device_hours,
    order_models,
    ordered_benchmarks,
    row_title,
    to_markdown,
)

#: (a, b) within one run: a - b
PAIRS = [("full", "lora"), ("full", "base"), ("lora", "base")]
STRATEGY_WORDS = {"full": "Full fine-tuning", "lora": "LoRA", "base": "the base model"}
PREDICTION_COLUMNS = ["model", "seed", "protocol", "benchmark", "item_id", "correct"]


def read_predictions(evaluations: Iterable[tuple[str, Path]]) -> pd.DataFrame:
    """One row per scored (model, seed, protocol, benchmark, item) from each evaluation's
    `predictions.parquet`; `evaluations` gives (model label, stage folder)."""
    frames = []
    for label, folder in evaluations:
        path = folder / "predictions.parquet"
        if not path.is_file():
            continue
        scored = pd.read_parquet(path, columns=["protocol", "benchmark", "item_id", "correct"])
        frames.append(scored.assign(model=label, seed=float("nan"))[PREDICTION_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    return pd.concat(frames, ignore_index=True).astype({"item_id": str, "correct": bool})


def model_pairs(models: Iterable[str]) -> list[tuple[str, str]]:
    """`PAIRS` among `models`, within each run (`run/full` pairs with `run/lora`)."""
    present = set(models)
    prefixes = dict.fromkeys(m.rpartition("/")[0] for m in models)
    pairs = []
    for prefix in prefixes:
        for a, b in PAIRS:
            pair = (f"{prefix}/{a}", f"{prefix}/{b}") if prefix else (a, b)
            if set(pair) <= present:
                pairs.append(pair)
    return pairs


def benchmark_groups(benchmarks: Iterable[str]) -> dict[str, list[str]]:
    """`average` (every benchmark scored, as the accuracy table averages them) and the
    benchmark groups (MMLU clinical, USMLE: unweighted means of their members)."""
    return {AVERAGE: sorted(set(benchmarks)), **task_groups()}


def compare(predictions: pd.DataFrame) -> pd.DataFrame:
    """`paired_differences` for every pair of models the predictions hold."""
    pairs = model_pairs(order_models(list(dict.fromkeys(predictions["model"]))))
    return paired_differences(predictions, pairs, benchmark_groups(predictions["benchmark"]))


# ------------------------------------------------------------------------------- writing
def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _cell(row: pd.Series) -> str:
    mark = "*" if row["holds"] else ""
    return f"{_points(row['diff'])} [{_points(row['low'])}, {_points(row['high'])}]{mark}"


def paired_table(paired: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Benchmarks (paper order, groups after) x pairs: difference [interval] in points."""
    part = paired[paired["protocol"] == protocol]
    part = part.assign(pair=part["a"] + " − " + part["b"], cell=part.apply(_cell, axis=1))
    wide = part.pivot_table(index="benchmark", columns="pair", values="cell", aggfunc="first")
    pairs = list(dict.fromkeys(part["pair"]))
    rows = ordered_benchmarks(list(wide.index))
    table = wide.loc[rows, pairs].reset_index()
    table.insert(0, "benchmark", table.pop("benchmark").map(row_title))
    items = part.drop_duplicates("benchmark").set_index("benchmark")["items"]
    table["items"] = [int(items[b]) for b in rows]
    return table


def sentence(row: pd.Series) -> str:
    """One generated clause for one paired difference on the average."""
    a, b = row["a"].rpartition("/")[2], row["b"].rpartition("/")[2]
    verdict = "holds" if row["holds"] else "within noise"
    seeds = int(row["seeds"])
    return (
        f"{STRATEGY_WORDS.get(a, a)} vs {STRATEGY_WORDS.get(b, b)} "
        f"**{_points(row['diff'])} points** ({LEVEL:.0%} CI {_points(row['low'])} to "
        f"{_points(row['high'])}, {int(row['items']):,} items x {seeds} seed{'s' * (seeds > 1)}): "
        f"{verdict}."
    )


def headline(paired: pd.DataFrame, costs: pd.DataFrame, benchmarks: int) -> str:
    """The report's opening sentences, every figure from `paired` and `costs` (the first
    protocol's average over all benchmarks)."""
    if not len(paired):
        return ""
    protocol = paired["protocol"].iloc[0]
    average = paired[(paired["protocol"] == protocol) & (paired["benchmark"] == AVERAGE)]
    lines = [f"Average of {benchmarks} benchmarks, protocol `{protocol}`, paired over items:"]
    lines += [sentence(row) for _, row in average.iterrows()]
    per_point = cost_per_point(paired, costs)
    per_point = per_point[(per_point["protocol"] == protocol) & (per_point["benchmark"] == AVERAGE)]
    costs_said = [
        f"{STRATEGY_WORDS.get(r.strategy, r.strategy)} {r.device_hours_per_point:.3g}"
        for r in per_point.itertuples()
        if r.device_hours_per_point == r.device_hours_per_point  # not NaN: something gained
    ]
    if costs_said:
        lines.append("Device-hours per point gained over the base: " + ", ".join(costs_said) + ".")
    return " ".join(lines)


def cost_per_point(paired: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and benchmark group (and the average): points gained over the base (the
    paired difference) and device-hours per point (NaN where nothing was gained)."""
    columns = ["protocol", "strategy", "benchmark", "gain_points", "device_hours_per_point"]
    if not len(paired) or not len(costs):
        return pd.DataFrame(columns=columns)
    hours = dict(zip(costs["strategy"], device_hours(costs), strict=True))
    groups = {AVERAGE, *task_groups()}
    over_base = paired[paired["b"].str.rpartition("/")[2].eq("base")]
    over_base = over_base[over_base["benchmark"].isin(groups) & over_base["a"].isin(hours)]
    rows = []
    for _, row in over_base.iterrows():
        gain = 100 * row["diff"]
        per_point = hours[row["a"]] / gain if gain > 0 else float("nan")
        rows.append((row["protocol"], row["a"], row["benchmark"], gain, per_point))
    return pd.DataFrame(rows, columns=columns)


def paired_numbers(paired: pd.DataFrame) -> pd.DataFrame:
    """`numbers.csv` rows (section `paired`, subject `protocol: a - b`)."""
    rows = [
        ("paired", f"{r.protocol}: {r.a} - {r.b}", r.benchmark, metric, float(r[metric]))
        for _, r in paired.iterrows()
        for metric in ("diff", "low", "high", "p_mcnemar", "items", "seeds")
    ]
    return pd.DataFrame(rows, columns=["section", "subject", "item", "metric", "value"])


PAIRED_MEANING = (
    "Differences in accuracy points between two models on the same items, a − b, with the "
    f"{LEVEL:.0%} interval of a paired bootstrap over items ({RESAMPLES:,} resamples; a group "
    "resampled within each member benchmark; seeds averaged per item). * marks a difference "
    "whose interval excludes zero. McNemar's exact p-values are in `paired.csv`."
)


def paired_section(paired: pd.DataFrame) -> str:
    """The `## Paired differences` body: one table per protocol."""
    tables = [
        f"`{protocol}`:\n\n" + to_markdown(paired_table(paired, protocol))
        for protocol in dict.fromkeys(paired["protocol"])
    ]
    return PAIRED_MEANING + "\n\n" + "\n\n".join(tables)
