"""The report's figures (PNG): training loss curves, accuracy per benchmark, and benchmark
accuracy during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    ylabel = "loss (assistant tokens)"
    return _save_line_plot(fig, ax, path, "optimizer step", ylabel, "Training loss")


def accuracy_bars(
    scores: pd.DataFrame,
    path: Path,
    models: list[str],
    labels: dict[str, str] | None = None,
) -> Path:
    """Grouped bars with standard-error whiskers: accuracy per benchmark, one bar per model,
    one panel per protocol (`protocol` column; one panel without it).

    Benchmarks appear in the order of their first row in `scores`, named by `labels`.
    """
    plt = _pyplot()
    labels = labels or {}
    benchmarks = list(dict.fromkeys(scores["benchmark"]))
    protocols = list(dict.fromkeys(scores["protocol"])) if "protocol" in scores else [""]
    width = 0.8 / max(len(models), 1)
    size = (min(16, max(7, 0.25 * len(benchmarks) * len(models))), 1 + 4 * len(protocols))
    fig, axes = plt.subplots(len(protocols), 1, figsize=size, sharex=True, squeeze=False)
    for ax, protocol in zip(axes[:, 0], protocols, strict=True):
        panel = scores[scores["protocol"] == protocol] if protocol else scores
        for i, model in enumerate(models):
            frame = panel[panel["model"] == model].set_index("benchmark").reindex(benchmarks)
            xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(benchmarks))]
            errors = 100 * frame["stderr"]
            ax.bar(xs, 100 * frame["acc"], width, yerr=errors, capsize=2, label=model)
        ax.set_ylabel(f"{protocol} accuracy (%)" if protocol else "accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    names = [labels.get(b, b) for b in benchmarks]
    axes[-1, 0].set_xticks(range(len(benchmarks)), names, rotation=40, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_curves(mean: pd.DataFrame, path: Path) -> Path:
    """Mean curve accuracy against tokens seen: one colour per model (full, LoRA), one line
    per training (seed) of it (`report.curves.mean_curve`'s frame)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(mean["model"]))}
    labelled: set[str] = set()
    for _, frame in mean.groupby("strategy", sort=False):
        model = frame["model"].iloc[0]
        ax.plot(
            frame["tokens"],
            100 * frame["acc"],
            "o-",
            color=colours[model],
            alpha=0.8,
            label=None if model in labelled else model,
        )
        labelled.add(model)
    ylabel = f"mean accuracy over {int(mean['benchmarks'].max())} benchmarks (%)"
    title = "Benchmark accuracy during training"
    return _save_line_plot(fig, ax, path, "tokens seen (non-padding, all workers)", ylabel, title)


def _save_line_plot(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, grid and legend a one-panel line plot, save it as a PNG and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path
