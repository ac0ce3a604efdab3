"""The few lines of a finished report a console shows: average accuracy per protocol."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from med42ray.report.tables import order_models


def average_lines(report: Path) -> list[str]:
    """One line per protocol from `report/numbers.csv`: each model's average accuracy over all
    benchmarks, the fine-tunes' difference to the base, e.g.
    `letter: base 32.1% | full 28.3% (-3.8) | lora 33.3% (+1.1)`."""
    numbers = pd.read_csv(Path(report) / "numbers.csv")
    rows = numbers[
        (numbers["section"] == "accuracy")
        & (numbers["item"] == "average")
        & (numbers["metric"] == "acc")
    ]
    named = [s.split(": ", 1) if ": " in s else ["", s] for s in rows["subject"].astype(str)]
    frame = pd.DataFrame(named, columns=["protocol", "model"]).assign(acc=list(rows["value"]))
    lines = []
    for protocol, part in frame.groupby("protocol", sort=False):
        acc = dict(zip(part["model"], part["acc"], strict=True))
        base = acc.get("base")
        cells = []
        for model in order_models(list(acc)):
            gain = None if base is None or model == "base" else 100 * (acc[model] - base)
            delta = "" if gain is None else f" ({gain:+.1f})"
            cells.append(f"{model} {100 * acc[model]:.1f}%{delta}")
        lines.append((f"{protocol}: " if protocol else "") + " | ".join(cells))
    return lines
