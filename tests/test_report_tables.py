import math

import pandas as pd
import pytest

from med42ray.report.plots import accuracy_bars, loss_curves
from med42ray.report.tables import PAPER_ROWS, accuracy_table, cost_table, group_means


def scores(models=("lora", "base", "full")) -> pd.DataFrame:
    rows = []
    for k, model in enumerate(models):
        for j, (bench, _) in enumerate(PAPER_ROWS):
            if bench in ("mmlu_clinical", "usmle"):
                continue
            rows.append(
                {
                    "model": model,
                    "benchmark": bench,
                    "acc": 0.1 * k + 0.01 * j,
                    "stderr": 0.02 + 0.001 * j,
                    "n": 10 + j,
                }
            )
    return pd.DataFrame(rows)


def test_group_means_are_unweighted_with_combined_stderr() -> None:
    frame = group_means(scores())
    base = frame[frame["model"] == "base"].set_index("benchmark")
    members = [b for b, _ in PAPER_ROWS[:6]]
    assert base.loc["mmlu_clinical", "acc"] == pytest.approx(base.loc[members, "acc"].mean())
    expected = math.sqrt(sum(base.loc[m, "stderr"] ** 2 for m in members)) / 6
    assert base.loc["mmlu_clinical", "stderr"] == pytest.approx(expected)
    assert (
        base.loc["usmle", "n"]
        == base.loc["usmle_self_assessment", "n"] + base.loc["usmle_sample_exam", "n"]
    )


def test_group_needs_all_members() -> None:
    partial = scores()
    partial = partial[partial["benchmark"] != "mmlu_anatomy"]
    assert "mmlu_clinical" not in set(group_means(partial)["benchmark"])


def test_accuracy_table_follows_the_paper_layout() -> None:
    table = accuracy_table(scores())
    assert list(table.columns) == ["benchmark", "base", "full", "lora", "n"]
    assert list(table["benchmark"]) == [label for _, label in PAPER_ROWS]
    medqa = table.set_index("benchmark").loc["MedQA"]
    assert medqa["base"] == "18.0 ± 2.8"  # model index 1 (base): 0.1 + 0.08, stderr 0.028
    assert medqa["lora"] == "8.0 ± 2.8"


def test_cost_table_derives_share_and_device_hours() -> None:
    train = pd.DataFrame(
        [
            {
                "strategy": "full",
                "trainable_params": 1000,
                "total_params": 1000,
                "peak_memory_gb": 2.0,
                "tokens_per_s": 100.0,
                "wall_s": 1800.0,
                "num_workers": 2,
                "device": "CPU",
            },
            {
                "strategy": "lora",
                "trainable_params": 10,
                "total_params": 1010,
                "peak_memory_gb": 1.0,
                "tokens_per_s": 150.0,
                "wall_s": 900.0,
                "num_workers": 2,
                "device": "CPU",
            },
        ]
    )
    table = cost_table(train).set_index("strategy")
    assert table.loc["full", "trainable %"] == 100.0
    assert table.loc["lora", "trainable %"] == pytest.approx(0.99)
    assert table.loc["full", "device-hours"] == "1.0 CPU-h"
    assert table.loc["lora", "trainable params"] == "10"


def test_plots_are_written(tmp_path) -> None:
    history = pd.DataFrame(
        {
            "strategy": ["full"] * 3 + ["lora"] * 3,
            "step": [1, 2, 3] * 2,
            "loss": [3.0, 2.0, 1.5, 3.0, 2.5, 2.2],
        }
    )
    png = loss_curves(history, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bars = accuracy_bars(scores(), tmp_path / "acc.png", ["base", "full", "lora"])
    assert bars.stat().st_size > 1000
