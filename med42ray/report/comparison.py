"""The comparison the study is about: full fine-tuning vs LoRA (and each vs the base model),
paired on the same items, its headline sentence generated from those numbers, and what each
accuracy point gained over the base model cost in device-hours."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from med42ray.benchmarks import task_groups
from med42ray.config import split_seed
from med42ray.report.paired import LEVEL, RESAMPLES, paired_differences
from med42ray.report.tables import (
    AVERAGE,
    device_hours,
    order_models,
    ordered_benchmarks,
    row_title,
    to_markdown,
    with_average,
    with_protocol,
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
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
        wanted = ["protocol", "scoring", "benchmark", "item_id", "correct"]
        scored = with_protocol(pd.read_parquet(path, columns=[c for c in wanted if c in present]))
        model, seed = split_seed(label)
        seed = float("nan") if seed is None else seed
        frames.append(scored.assign(model=model, seed=seed)[PREDICTION_COLUMNS])
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
    trainings = costs.assign(
        model=costs["strategy"].map(lambda s: split_seed(s)[0]), hours=device_hours(costs)
    )
    hours = trainings.groupby("model")["hours"].mean().to_dict()  # one training, over seeds
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


# ------------------------------------------------------------------------------------ seeds
def mean_over_seeds(scores: pd.DataFrame) -> pd.DataFrame:
    """Scores with models trained once per seed (`full-seed0`, `full-seed1`) as one model
    each: the mean accuracy over its seeds, with the mean of their item-level standard errors
    (the spread over seeds is `seed_table`'s)."""
    models = scores["model"].map(lambda m: split_seed(m)[0])
    if models.equals(scores["model"]):
        return scores
    keys = [c for c in ("model", "protocol", "level", "benchmark") if c in scores]
    grouped = scores.assign(model=models).groupby(keys, sort=False)
    means = grouped.agg(acc=("acc", "mean"), stderr=("stderr", "mean"), n=("n", "first"))
    return means.reset_index()


SEED_COLUMNS = ["protocol", "model", "benchmark", "seeds", "mean", "sd", "min", "max", "each"]


def seed_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model trained with several seeds, protocol and group (the average, MMLU clinical,
    USMLE): each seed's accuracy, their mean, standard deviation, min and max."""
    rows = with_average(scores)
    rows = rows[rows["level"].isin(["average", "group"])]
    split = rows["model"].map(split_seed)
    rows = rows.assign(model=split.map(lambda x: x[0]), seed=split.map(lambda x: x[1]))
    rows = rows[rows["seed"].notna()].sort_values("seed", kind="stable")
    if not len(rows):
        return pd.DataFrame(columns=SEED_COLUMNS)
    grouped = rows.groupby(["protocol", "model", "benchmark"], sort=False)["acc"]
    table = grouped.agg(seeds="count", mean="mean", sd="std", min="min", max="max")
    table["each"] = grouped.agg(lambda acc: ", ".join(f"{100 * a:.1f}" for a in acc))
    table = table.reset_index()
    protocols = {p: i for i, p in enumerate(dict.fromkeys(table["protocol"]))}
    benchmarks = {b: i for i, b in enumerate(ordered_benchmarks(list(table["benchmark"])))}
    rank = table["protocol"].map(protocols) * 10_000 + table["benchmark"].map(benchmarks)
    models = order_models(list(dict.fromkeys(table["model"])))
    table = table.assign(_rank=rank, _model=table["model"].map(models.index))
    return table.sort_values(["_rank", "_model"], kind="stable")[SEED_COLUMNS]


def seed_numbers(table: pd.DataFrame) -> pd.DataFrame:
    """`numbers.csv` rows (section `seeds`, subject `protocol: model`)."""
    rows = [
        ("seeds", f"{r.protocol}: {r.model}", r.benchmark, metric, float(r[metric]))
        for _, r in table.iterrows()
        for metric in ("seeds", "mean", "sd", "min", "max")
    ]
    return pd.DataFrame(rows, columns=["section", "subject", "item", "metric", "value"])


def seed_section(table: pd.DataFrame) -> str:
    shown = table.assign(
        benchmark=table["benchmark"].map(row_title),
        **{c: (100 * table[c]).round(2) for c in ("mean", "sd", "min", "max")},
    )
    return (
        "Accuracy (%) of each model trained once per seed (`run.seeds`), on the average and "
        "the groups: their mean (the accuracy table's), standard deviation, min, max and every "
        "seed's figure in seed order.\n\n" + to_markdown(shown)
    )


# -------------------------------------------------------------------------- matched budgets
def budget_sentence(costs: pd.DataFrame) -> str:
    """Whether the strategies compared saw the same budget: one prepared data for all
    trainings, and within each seed the same tokens in the same steps (different seeds draw
    different orders, so their token counts may differ)."""
    seeds = costs["strategy"].map(lambda s: split_seed(s)[1])
    differ = ["data"] if costs["data_key"].nunique() > 1 else []
    for field in ("tokens", "steps"):
        if (costs.groupby(seeds.fillna(-1))[field].nunique() > 1).any():
            differ.append(field)
    if differ:
        return "Not matched: the trainings differ in " + ", ".join(differ) + " (table below)."
    per_seed = costs.groupby(seeds.fillna(-1), sort=True).first()
    seen = "; ".join(
        (f"seed {int(seed)}: " if seed >= 0 else "")
        + f"{int(row['tokens']):,} non-padding tokens in {int(row['steps'])} steps"
        for seed, row in per_seed.iterrows()
    )
    return (
        f"Matched: all {len(costs)} trainings read the prepared data "
        f"`{costs['data_key'].iloc[0]}`, and every strategy saw the same budget ({seen})."
    )


def budget_section(costs: pd.DataFrame) -> str:
    table = costs[["strategy", "data_key", "steps", "tokens", "label_tokens"]].rename(
        columns={"data_key": "data", "tokens": "tokens seen", "label_tokens": "label tokens"}
    )
    return budget_sentence(costs) + "\n\n" + to_markdown(table)
