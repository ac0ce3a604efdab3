import math

import pandas as pd
import pytest

from med42ray.report.build import complete_groups
from med42ray.report.plots import accuracy_bars, loss_curves
from med42ray.report.tables import (
    PAPER_ROWS,
    accuracy_table,
    agreement_table,
    cost_table,
    with_average,
)

GROUP_ROWS = {"mmlu_clinical", "mmlu_clinical_weighted", "usmle", "usmle_weighted", "average"}


def scores(models=("lora", "base", "full")) -> pd.DataFrame:
    rows = []
    for k, model in enumerate(models):
        for j, (bench, _) in enumerate(PAPER_ROWS):
            rows.append(
                {
                    "model": model,
                    "level": "group" if bench in GROUP_ROWS else "task",
                    "benchmark": bench,
                    "acc": 0.1 * k + 0.01 * j,
                    "stderr": 0.02 + 0.001 * j,
                    "n": 10 + j,
                }
            )
    frame = pd.DataFrame(rows)
    return frame[frame["benchmark"] != "average"]


def test_average_is_unweighted_over_tasks_with_combined_stderr() -> None:
    frame = with_average(scores())
    base = frame[frame["model"] == "base"].set_index("benchmark")
    tasks = [b for b, _ in PAPER_ROWS if b not in GROUP_ROWS]
    assert len(tasks) == 12
    assert base.loc["average", "acc"] == pytest.approx(base.loc[tasks, "acc"].mean())
    expected = math.sqrt(sum(base.loc[t, "stderr"] ** 2 for t in tasks)) / 12
    assert base.loc["average", "stderr"] == pytest.approx(expected)
    assert base.loc["average", "n"] == base.loc[tasks, "n"].sum()


def test_group_rows_are_kept_only_when_complete() -> None:
    summary = pd.DataFrame(
        [
            {"level": "task", "benchmark": "usmle_sample_exam", "subset": ""},
            {"level": "subset", "benchmark": "usmle_sample_exam", "subset": "1"},
            {"level": "group", "benchmark": "usmle", "subset": "usmle_sample_exam"},
            {
                "level": "group",
                "benchmark": "usmle",
                "subset": "usmle_self_assessment,usmle_sample_exam",
            },
        ]
    )
    kept = complete_groups(summary)
    assert list(kept.index) == [0, 3]


def test_paper_rows_give_mmlu_clinical_both_ways() -> None:
    labels = dict(PAPER_ROWS)
    order = [b for b, _ in PAPER_ROWS]
    assert order.index("mmlu_clinical_weighted") == order.index("mmlu_clinical") + 1
    assert labels["mmlu_clinical"] == "MMLU clinical, mean of 6"  # the paper's
    assert labels["mmlu_clinical_weighted"] == (
        "MMLU clinical, size-weighted (as lm-eval's multimedqa)"
    )


def test_accuracy_table_has_a_column_group_per_protocol() -> None:
    frame = pd.concat(
        [scores().assign(protocol="letter"), scores().assign(protocol="cloze", acc=0.5)],
        ignore_index=True,
    )
    table = accuracy_table(frame)
    assert list(table.columns) == [
        "benchmark",
        *(f"{p}: {m}" for p in ("letter", "cloze") for m in ("base", "full", "lora")),
        "n",
    ]
    medqa = table.set_index("benchmark").loc["MedQA"]
    assert medqa["letter: base"] == "19.0 ± 2.9" and medqa["cloze: base"] == "50.0 ± 2.9"
    average = with_average(frame)
    average = average[average["level"] == "average"].set_index(["protocol", "model"])
    assert average.loc[("cloze", "lora"), "acc"] == pytest.approx(0.5)
    assert len(average) == 6


def test_agreement_table_cells_are_base_full_lora() -> None:
    rows = []
    for k, model in enumerate(["lora", "base", "full"]):
        for bench in ["medqa", "mmlu_anatomy", "all"]:
            rows.append(
                {"model": model, "benchmark": bench, "protocol_a": "letter",
                 "protocol_b": "cloze", "n": 5, "agree": 0.2 * k}
            )  # fmt: skip
    table = agreement_table(pd.DataFrame(rows))
    assert list(table.columns) == ["benchmark", "letter ~ cloze", "n"]
    assert list(table["benchmark"]) == ["MMLU anatomy", "MedQA", "All benchmarks (items pooled)"]
    assert table.set_index("benchmark").loc["MedQA", "letter ~ cloze"] == "20 / 40 / 0"


def test_accuracy_table_follows_the_paper_layout() -> None:
    table = accuracy_table(scores())
    assert list(table.columns) == ["benchmark", "base", "full", "lora", "n"]
    assert list(table["benchmark"]) == [label for _, label in PAPER_ROWS]
    medqa = table.set_index("benchmark").loc["MedQA"]
    assert medqa["base"] == "19.0 ± 2.9"  # model index 1 (base): 0.1 + 0.09, stderr 0.029
    assert medqa["lora"] == "9.0 ± 2.9"


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
            {
                "strategy": "full-8xH200",
                "trainable_params": 1000,
                "total_params": 1000,
                "peak_memory_gb": 1.0,
                "tokens_per_s": 150.0,
                "wall_s": 1800.0,
                "num_workers": 2,
                "devices_per_worker": 8,
                "device": "GPU",
            },
        ]
    )
    table = cost_table(train).set_index("strategy")
    assert table.loc["full-8xH200", "device-hours"] == "8.0 GPU-h"  # wall x workers x GPUs
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
