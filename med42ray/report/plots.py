"""The report's figures (PNG): training loss curves and accuracy per benchmark."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on cluster nodes or CI
    import matplotlib.pyplot as plt

    return plt


def loss_curves(history: pd.DataFrame, path: Path) -> Path:
    """One line per strategy: training loss (and eval loss where logged) against step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for strategy, frame in history.groupby("strategy", sort=False):
        (line,) = ax.plot(frame["step"], frame["loss"], label=f"{strategy} train")
        if "eval_loss" in frame and frame["eval_loss"].notna().any():
            evals = frame.dropna(subset=["eval_loss"])
            ax.plot(
                evals["step"],
                evals["eval_loss"],
                "o--",
                color=line.get_color(),
                label=f"{strategy} held-out",
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_bars(
    scores: pd.DataFrame,
    path: Path,
    models: list[str],
    labels: dict[str, str] | None = None,
) -> Path:
    """Grouped bars with standard-error whiskers: accuracy per benchmark, one bar per model.

    Benchmarks appear in the order of their first row in `scores`, named by `labels`.
    """
    plt = _pyplot()
    labels = labels or {}
    benchmarks = list(dict.fromkeys(scores["benchmark"]))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(min(16, max(7, 0.25 * len(benchmarks) * len(models))), 5))
    for i, model in enumerate(models):
        frame = scores[scores["model"] == model].set_index("benchmark").reindex(benchmarks)
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(benchmarks))]
        ax.bar(xs, 100 * frame["acc"], width, yerr=100 * frame["stderr"], capsize=2, label=model)
    names = [labels.get(b, b) for b in benchmarks]
    ax.set_xticks(range(len(benchmarks)), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
