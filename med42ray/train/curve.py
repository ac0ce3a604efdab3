"""The benchmark curve of a training (`train.curve`): which checkpoints are scored, where each
point goes, and the stage's `curve.csv`.

The scoring itself runs off the training workers, in Ray Train's checkpoint validation task
(`med42ray.checkpoint_eval`); this module holds only what the recipe and the driver share:

    <export_to>/curve/step-000050.json   one point: step, tokens seen, accuracy per benchmark
    <out>/curve.csv                      every point, one row per (step, benchmark)

A point is written by the task that scored it, so a point survives a restart of the training
and a resumed run scores only the checkpoints it has not scored yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from med42ray import storage
from med42ray.config import TrainConfig

CURVE_DIR = "curve"
CURVE_FILE = "curve.csv"
COLUMNS = ["step", "tokens", "benchmark", "acc", "acc_stderr", "n", "protocol"]


def curve_due(train: TrainConfig, step: int, final: bool) -> bool:
    """Whether the checkpoint saved at `step` is scored: every `eval_every_checkpoint`-th
    checkpoint of the run (counted from step 0, so a resumed run keeps the same points) and
    the last one."""
    every = train.curve.eval_every_checkpoint
    if not every:
        return False
    if final:
        return True
    return bool(train.checkpoint_every) and (step // train.checkpoint_every) % every == 0


def point_location(export_to: str | Path, step: int) -> str:
    return storage.join(export_to, CURVE_DIR, f"step-{step:06d}.json")


def write_point(export_to: str | Path, point: dict[str, Any]) -> str:
    """Write one scored checkpoint's point (`step`, `tokens`, `protocol`, `benchmarks`:
    {name: {acc, acc_stderr, n}})."""
    return storage.write_text(point_location(export_to, point["step"]), json.dumps(point))


def read_points(export_to: str | Path) -> pd.DataFrame:
    """Every point under `<export_to>/curve/`, one row per (step, benchmark), by step."""
    folder = storage.join(export_to, CURVE_DIR)
    rows = []
    for name in sorted(storage.list_files(folder)):
        if not name.endswith(".json"):
            continue
        point = json.loads(storage.read_text(storage.join(folder, name)))
        for bench, score in point["benchmarks"].items():
            rows.append(
                {
                    "step": point["step"],
                    "tokens": point["tokens"],
                    "benchmark": bench,
                    **score,
                    "protocol": point["protocol"],
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["step", "benchmark"], kind="stable").reset_index(drop=True)


def write_curve(export_to: str | Path, out: Path) -> pd.DataFrame:
    """`out/curve.csv` from the points the scoring tasks wrote; returns it."""
    frame = read_points(export_to)
    frame.to_csv(Path(out) / CURVE_FILE, index=False)
    return frame
