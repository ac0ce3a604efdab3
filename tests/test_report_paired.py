"""Paired differences between models on the same items (`med42ray.report.paired`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, bootstrap

from med42ray.report.paired import bootstrap_means, mcnemar_p, paired_differences


def predictions(model: str, correct, bench: str = "medqa", seed=np.nan, protocol="letter"):
    return pd.DataFrame(
        {
            "model": model,
            "seed": seed,
            "protocol": protocol,
            "benchmark": bench,
            "item_id": [str(i) for i in range(len(correct))],
            "correct": np.asarray(correct, dtype=bool),
        }
    )


def test_multinomial_bootstrap_matches_scipy_resampling_items():
    rng = np.random.default_rng(1)
    d = rng.choice([-1.0, 0.0, 1.0], size=600, p=[0.15, 0.6, 0.25])
    ours = bootstrap_means(d, 20_000, np.random.default_rng(0))
    theirs = bootstrap(
        (d,), np.mean, n_resamples=20_000, method="percentile", random_state=0, batch=2000
    ).confidence_interval
    assert ours.mean() == pytest.approx(d.mean(), abs=2e-3)
    assert np.quantile(ours, 0.025) == pytest.approx(theirs.low, abs=4e-3)
    assert np.quantile(ours, 0.975) == pytest.approx(theirs.high, abs=4e-3)


def test_a_known_difference_its_interval_and_mcnemar():
    # 100 items: both right on 40, a only on 25, b only on 5, both wrong on 30
    a = [1] * 40 + [1] * 25 + [0] * 5 + [0] * 30
    b = [1] * 40 + [0] * 25 + [1] * 5 + [0] * 30
    frame = pd.concat([predictions("full", a), predictions("lora", b)])
    table = paired_differences(frame, [("full", "lora")], groups={})
    (row,) = table.to_dict("records")
    assert (row["a"], row["b"], row["items"], row["seeds"]) == ("full", "lora", 100, 1)
    assert row["diff"] == pytest.approx(0.20)
    assert row["low"] > 0.05 and row["high"] < 0.35 and row["holds"]
    assert row["p_mcnemar"] == pytest.approx(binomtest(25, 30, 0.5).pvalue)


def test_identical_models_differ_by_nothing():
    same = [1, 0, 1, 1, 0, 0, 1]
    frame = pd.concat([predictions("full", same), predictions("lora", same)])
    (row,) = paired_differences(frame, [("full", "lora")], groups={}).to_dict("records")
    assert (row["diff"], row["low"], row["high"], row["holds"]) == (0.0, 0.0, 0.0, False)
    assert row["p_mcnemar"] == 1.0 == mcnemar_p(0, 0)


def test_seeds_are_pooled_per_item_and_the_base_pairs_with_each_seed():
    base = predictions("base", [0, 0, 1, 1])
    full = pd.concat(
        [predictions("full", [1, 0, 1, 1], seed=0), predictions("full", [1, 1, 1, 0], seed=1)]
    )
    (row,) = paired_differences(pd.concat([base, full]), [("full", "base")], {}).to_dict("records")
    # per item: full's mean over seeds minus base: 1, 0.5, 0, -0.5 -> mean 0.25
    assert (row["items"], row["seeds"], row["diff"]) == (4, 2, pytest.approx(0.25))
    # discordant (item, seed) pairs: full only 3 (item 0 x2, item 1 seed 1), base only 1
    assert row["p_mcnemar"] == pytest.approx(binomtest(3, 4, 0.5).pvalue)


def test_a_group_is_the_unweighted_mean_of_complete_members_only():
    frame = pd.concat(
        [
            predictions("full", [1] * 10, bench="x"),
            predictions("lora", [0] * 10, bench="x"),
            predictions("full", [1] * 2 + [0] * 98, bench="y"),
            predictions("lora", [0] * 100, bench="y"),
        ]
    )
    groups = {"both": ["x", "y"], "with_missing": ["x", "z"]}
    table = paired_differences(frame, [("full", "lora")], groups).set_index("benchmark")
    assert list(table.index) == ["x", "y", "both"]
    assert table.loc["both", "diff"] == pytest.approx((1.0 + 0.02) / 2)
    assert table.loc["both", "items"] == 110
    assert table.loc["both", "p_mcnemar"] == pytest.approx(binomtest(12, 12, 0.5).pvalue)


def test_the_same_predictions_give_the_same_numbers():
    rng = np.random.default_rng(3)
    frame = pd.concat(
        [
            predictions(m, rng.random(300) < p, bench=b)
            for m, p in (("full", 0.6), ("lora", 0.55), ("base", 0.4))
            for b in ("medqa", "pubmedqa")
        ]
    )
    pairs = [("full", "lora"), ("full", "base"), ("lora", "base")]
    groups = {"average": ["medqa", "pubmedqa"]}
    first = paired_differences(frame, pairs, groups)
    second = paired_differences(frame.sample(frac=1, random_state=0), pairs[::-1], groups)
    key = ["protocol", "benchmark", "a", "b"]
    pd.testing.assert_frame_equal(
        first.sort_values(key).reset_index(drop=True),
        second.sort_values(key).reset_index(drop=True),
    )


# ---------------------------------------------------------------------- the comparison layer
def test_pairs_are_taken_within_each_run():
    from med42ray.report.comparison import model_pairs

    assert model_pairs(["base", "full", "lora"]) == [
        ("full", "lora"),
        ("full", "base"),
        ("lora", "base"),
    ]
    two_runs = ["1:run/base", "1:run/full", "2:run/base", "2:run/lora"]
    assert model_pairs(two_runs) == [("1:run/full", "1:run/base"), ("2:run/lora", "2:run/base")]


def study(full=0.7, lora=0.6, base=0.4, items=400):
    """Predictions of three models on two benchmarks, fixed draws."""
    rng = np.random.default_rng(7)
    hard = rng.random(items)  # shared item difficulty: the pairing matters
    return pd.concat(
        [
            predictions(m, hard < p, bench=b)
            for m, p in (("base", base), ("full", full), ("lora", lora))
            for b in ("medqa", "headqa")
        ]
    )


COSTS = pd.DataFrame(
    {"strategy": ["full", "lora"], "wall_s": [3600.0, 1800.0], "num_workers": [2, 1]}
)


def test_cost_per_point_divides_device_hours_by_the_paired_gain():
    from med42ray.report.comparison import compare, cost_per_point

    paired = compare(study())
    table = cost_per_point(paired, COSTS).set_index(["strategy", "benchmark"])
    gains = paired[paired["b"] == "base"].set_index(["a", "benchmark"])["diff"]
    assert table.loc[("full", "average"), "gain_points"] == pytest.approx(
        100 * gains[("full", "average")]
    )
    assert table.loc[("full", "average"), "device_hours_per_point"] == pytest.approx(
        2.0 / (100 * gains[("full", "average")])
    )
    assert table.loc[("lora", "average"), "device_hours_per_point"] == pytest.approx(
        0.5 / (100 * gains[("lora", "average")])
    )
    worse = cost_per_point(compare(study(full=0.3)), COSTS).set_index(["strategy", "benchmark"])
    assert math.isnan(worse.loc[("full", "average"), "device_hours_per_point"])


def test_the_headline_is_generated_from_the_paired_numbers():
    from med42ray.report.comparison import compare, headline

    paired = compare(study())
    text = headline(paired, COSTS, benchmarks=2)
    row = paired.set_index(["a", "b", "benchmark"]).loc[("full", "lora", "average")]
    assert text.startswith("Average of 2 benchmarks, protocol `letter`, paired over items:")
    assert f"Full fine-tuning vs LoRA **{100 * row['diff']:+.1f} points**" in text
    assert f"CI {100 * row['low']:+.1f} to {100 * row['high']:+.1f}" in text
    assert "800 items x 1 seed)" in text
    assert ("holds" if row["holds"] else "within noise") in text
    assert "Device-hours per point gained over the base: Full fine-tuning" in text
    close = headline(compare(study(full=0.6, lora=0.6)), COSTS, benchmarks=2)
    assert "Full fine-tuning vs LoRA **+0.0 points**" in close and "within noise" in close


# ------------------------------------------------------------------------ seeds and budgets
def seeded_scores() -> pd.DataFrame:
    rows = []
    for model, accs in (("base", [0.30]), ("full-seed0", [0.50]), ("full-seed1", [0.60])):
        for bench, shift in (("medqa", 0.0), ("headqa", 0.1)):
            for acc in accs:
                rows.append(
                    {"model": model, "protocol": "letter", "level": "task",
                     "benchmark": bench, "acc": acc + shift, "stderr": 0.05, "n": 100}
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_models_trained_per_seed_are_averaged_and_their_spread_reported():
    from med42ray.config import seeded_label, split_seed
    from med42ray.report.comparison import mean_over_seeds, seed_table

    assert split_seed(seeded_label("full", 3)) == ("full", 3) and split_seed("base") == (
        "base",
        None,
    )
    means = mean_over_seeds(seeded_scores()).set_index(["model", "benchmark"])
    assert set(means.index.get_level_values("model")) == {"base", "full"}
    assert means.loc[("full", "medqa"), "acc"] == pytest.approx(0.55)
    assert means.loc[("full", "headqa"), "n"] == 100
    (row,) = seed_table(seeded_scores()).to_dict("records")  # the average; base has no seeds
    assert (row["model"], row["benchmark"], row["seeds"]) == ("full", "average", 2)
    assert row["mean"] == pytest.approx(0.60) and row["sd"] == pytest.approx(0.1 / np.sqrt(2))
    assert row["each"] == "55.0, 65.0"
    unseeded = seeded_scores()[lambda f: ~f["model"].str.contains("seed")]
    assert mean_over_seeds(unseeded) is unseeded and seed_table(unseeded).empty


def test_seeds_are_pooled_in_the_paired_predictions(tmp_path):
    from med42ray.report.comparison import read_predictions

    folders = {}
    for label, correct in (("base", [0, 1]), ("lora-seed0", [1, 1]), ("lora-seed1", [1, 0])):
        folders[label] = tmp_path / label
        folders[label].mkdir()
        frame = predictions(label, correct).drop(columns=["model", "seed"])
        frame.to_parquet(folders[label] / "predictions.parquet")
    read = read_predictions(folders.items())
    assert sorted(read["model"].unique()) == ["base", "lora"]
    assert sorted(read.loc[read["model"] == "lora", "seed"].unique()) == [0.0, 1.0]
    assert read.loc[read["model"] == "base", "seed"].isna().all()


def test_matched_budgets_are_stated_from_the_training_records():
    from med42ray.report.comparison import budget_sentence

    same = pd.DataFrame(
        {"strategy": ["full", "lora"], "data_key": ["abc", "abc"], "tokens": [1200, 1200],
         "steps": [6, 6]}
    )  # fmt: skip
    assert budget_sentence(same) == (
        "Matched: all 2 trainings read the prepared data `abc`, and every strategy saw the "
        "same budget (1,200 non-padding tokens in 6 steps)."
    )
    other = same.assign(tokens=[1200, 1100], data_key=["abc", "abd"])
    said = budget_sentence(other)
    assert said == "Not matched: the trainings differ in data, tokens (table below)."
    seeded = pd.DataFrame(
        {"strategy": ["full-seed0", "lora-seed0", "full-seed1", "lora-seed1"],
         "data_key": ["abc"] * 4, "tokens": [1200, 1200, 1300, 1300], "steps": [6] * 4}
    )  # fmt: skip
    assert budget_sentence(seeded).endswith(
        "(seed 0: 1,200 non-padding tokens in 6 steps; seed 1: 1,300 non-padding tokens in "
        "6 steps)."
    )
    unmatched = seeded.assign(tokens=[1200, 1250, 1300, 1300])
    assert budget_sentence(unmatched).startswith("Not matched: the trainings differ in tokens")
