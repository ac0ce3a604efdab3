"""Benchmark accuracy during training: the report's figure, table and numbers.

Each training stage with `train.curve` on holds `curve.csv` (`med42ray.train.curve`): the
accuracy of some of its checkpoints on a few benchmarks, scored off the workers while it
trained. Here full and LoRA (every seed) go on one figure, against tokens seen, so the
comparison is of learning curves, not only of end points.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from med42ray.config import split_seed
from med42ray.report.plots import accuracy_curves
from med42ray.report.tables import row_title, to_markdown
from med42ray.train.curve import CURVE_FILE

FIGURE = "accuracy_curves.png"


def read_curves(trainings: Iterable[tuple[str, Path]]) -> pd.DataFrame:
    """Every training's `curve.csv` ((label, stage folder) pairs), one frame with a `strategy`
    column (the training's label, as in the training table)."""
    frames = []
    for label, folder in trainings:
        path = Path(folder) / CURVE_FILE
        if path.is_file() and path.stat().st_size:
            frame = pd.read_csv(path)
            if len(frame):
                frames.append(frame.assign(strategy=label))
    if not frames:
        return pd.DataFrame()
    curves = pd.concat(frames, ignore_index=True)
    return curves[["strategy", *[c for c in curves if c != "strategy"]]]


def mean_curve(curves: pd.DataFrame) -> pd.DataFrame:
    """Per training and scored checkpoint: the unweighted mean accuracy over the curve's
    benchmarks (`benchmarks` of them), with `model` the training's label without its seed."""
    mean = (
        curves.groupby(["strategy", "step", "tokens"], sort=False)
        .agg(acc=("acc", "mean"), benchmarks=("benchmark", "nunique"))
        .reset_index()
    )
    mean.insert(1, "model", mean["strategy"].map(lambda s: split_seed(s)[0]))
    return mean


def curve_numbers(curves: pd.DataFrame) -> pd.DataFrame:
    """`numbers.csv` rows (section `curve`, subject the training, item `benchmark@step`)."""
    rows = [
        ("curve", r.strategy, f"{r.benchmark}@{r.step}", metric, float(getattr(r, metric)))
        for r in curves.itertuples()
        for metric in ("acc", "n", "tokens")
    ]
    return pd.DataFrame(rows, columns=["section", "subject", "item", "metric", "value"])


def curve_section(curves: pd.DataFrame, out: Path) -> str:
    """The section's Markdown (a table of every point, the figure); draws the figure."""
    mean = mean_curve(curves)
    accuracy_curves(mean, Path(out) / FIGURE)
    wide = curves.assign(
        benchmark=curves["benchmark"].map(row_title), acc=(100 * curves["acc"]).round(1)
    ).pivot_table(index=["strategy", "step", "tokens"], columns="benchmark", values="acc")
    wide["mean"] = (100 * mean.set_index(["strategy", "step", "tokens"])["acc"]).round(1)
    items = ", ".join(
        f"{row_title(b)} {n}" for b, n in curves.groupby("benchmark")["n"].max().items()
    )
    protocol = curves["protocol"].iloc[0]
    return (
        f"Accuracy (%, `{protocol}`) of checkpoints scored while training went on, in a Ray "
        f"task off the training workers (`train.curve`), on the first items of a few "
        f"benchmarks ({items}); tokens are the non-padding tokens seen so far, all workers. "
        "Not the final scores: those are above, on every item.\n\n"
        + to_markdown(wide.reset_index().rename_axis(columns=None))
        + f"\n\n![benchmark accuracy during training]({FIGURE})"
    )
