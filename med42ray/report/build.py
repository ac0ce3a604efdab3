"""`report.md` from finished runs: `build_report([RUN_DIR, ...], OUT)`.

Everything is read from the stages' own outputs (`run.json` names them): each evaluation's
`summary.csv` (rows per scoring protocol), `agreement.csv` and `eval.json`, each training's
`train_result.json`, `metrics.jsonl` and resolved config, the data stage's `manifest.json`.
Nothing is recomputed, so the report always agrees with the stage outputs, and `numbers.csv`
holds every number the report shows. With several runs the models are labelled `<run>/<model>`
and compared side by side; with several protocols each has a column group, `<protocol>: <model>`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from med42ray.benchmarks import task_groups
from med42ray.config import split_seed
from med42ray.data.manifest import CATEGORIES
from med42ray.eval.metrics import WEIGHTED
from med42ray.report.comparison import (
    budget_section,
    compare,
    cost_per_point,
    mean_over_seeds,
    paired_numbers,
    paired_section,
    read_predictions,
    seed_numbers,
    seed_section,
    seed_table,
)
from med42ray.report.comparison import headline as comparison_headline
from med42ray.report.curves import curve_numbers, curve_section, read_curves
from med42ray.report.html import write_html
from med42ray.report.plots import accuracy_bars, loss_curves
from med42ray.report.tables import (
    PAPER_ROWS,
    accuracy_table,
    agreement_table,
    clean_table,
    column_order,
    cost_table,
    order_models,
    protocols_of,
    row_title,
    to_markdown,
    with_average,
    with_columns,
    with_protocol,
)
from med42ray.stages import read_index

log = logging.getLogger(__name__)
DATA_COLUMNS = ["read", "kept", *CATEGORIES]  # read = kept + every removed category


@dataclass(frozen=True)
class Run:
    """One finished (or partly finished) `med42ray run` folder."""

    folder: Path
    label: str
    index: dict[str, Any]

    def stage(self, name: str) -> Path | None:
        folder = self.index["stages"].get(name)
        return self.folder / folder if folder else None

    def stages(self, prefix: str) -> dict[str, Path]:
        """Stage folders whose name starts with `prefix-`, by the rest of the name."""
        return {
            name.removeprefix(f"{prefix}-"): self.folder / folder
            for name, folder in self.index["stages"].items()
            if name.startswith(f"{prefix}-")
        }

    def model_label(self, model: str, several: bool) -> str:
        return f"{self.label}/{model}" if several else model


def load_runs(run_dirs: list[Path]) -> list[Run]:
    runs = [Run(Path(d), Path(d).resolve().name, read_index(Path(d))) for d in run_dirs]
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):  # same folder name in different places
        runs = [Run(r.folder, f"{i + 1}:{r.label}", r.index) for i, r in enumerate(runs)]
    return runs


# ---------------------------------------------------------------------------------- readers
def complete_groups(summary: pd.DataFrame) -> pd.DataFrame:
    """Task rows, plus group rows (unweighted and size-weighted) only where every member was
    scored (no misleading means)."""
    groups = task_groups()
    keep = summary["level"] == "task"
    for i, row in summary[summary["level"] == "group"].iterrows():
        members = set(str(row["subset"]).split(","))
        keep[i] = members == set(groups.get(str(row["benchmark"]).removesuffix(WEIGHTED), []))
    return summary[keep]


def eval_folders(runs: list[Run]) -> Iterator[tuple[str, Path]]:
    """(model label, stage folder) of every evaluation of every run."""
    several = len(runs) > 1
    for run in runs:
        for model, folder in run.stages("eval").items():
            yield run.model_label(model, several), folder


def eval_summaries(runs: list[Run]) -> Iterator[tuple[str, pd.DataFrame]]:
    """(model label, the evaluation's summary.csv) for every evaluation of every run (a
    summary from before protocols has one, named by its scoring mode)."""
    for label, folder in eval_folders(runs):
        yield label, with_protocol(pd.read_csv(folder / "summary.csv", keep_default_na=False))


def read_scores(runs: list[Run]) -> pd.DataFrame:
    """model, level, benchmark, acc, stderr, n for every evaluation of every run."""
    frames = []
    for label, summary in eval_summaries(runs):
        summary = complete_groups(summary)
        frames.append(
            pd.DataFrame(
                {
                    "model": label,
                    "protocol": summary["protocol"].astype(str),
                    "level": summary["level"],
                    "benchmark": summary["benchmark"],
                    "acc": summary["acc"].astype(float),
                    "stderr": summary["acc_stderr"].astype(float),
                    "n": summary["n"].astype(int),
                }
            )
        )
    columns = ["model", "protocol", "level", "benchmark", "acc", "stderr", "n"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


CLEAN_COLUMNS = ["model", "protocol", "benchmark", "acc", "n", "acc_clean", "n_clean"]


def clean_summary(run: Run, folder: Path, label: str) -> pd.DataFrame | None:
    """An evaluation's summary recomputed with its items marked clean against the run's data
    stage (`overlap.json`): computed here, from the predictions, so that new training data
    changes the clean columns without scoring anything again."""
    from med42ray.data.overlap import OVERLAP_FILE, read_overlap
    from med42ray.eval.metrics import summarise
    from med42ray.eval.runner import clean_items

    data = run.stage("data")
    predictions_file = folder / "predictions.parquet"
    if data is None or not (data / OVERLAP_FILE).is_file() or not predictions_file.is_file():
        return None
    predictions = pd.read_parquet(predictions_file)
    predictions["clean"] = clean_items(predictions, read_overlap(data / OVERLAP_FILE))
    return summarise(predictions, {"model": label, "engine": "", "scoring": "", "wall_s": 0.0})


def read_clean_scores(runs: list[Run]) -> pd.DataFrame:
    """model, benchmark, acc, n, acc_clean, n_clean of the task and (complete) group rows of
    every evaluation of a run whose data stage recorded its overlap."""
    frames = []
    several = len(runs) > 1
    for run in runs:
        for model, folder in run.stages("eval").items():
            label = run.model_label(model, several)
            summary = clean_summary(run, folder, label)
            if summary is None:
                continue
            summary = complete_groups(summary)
            if summary["protocol"].isna().all():  # predictions from before protocols
                summary["protocol"] = summary["scoring"].fillna("")
            frame = summary[["protocol", "benchmark", "acc", "n", "acc_clean", "n_clean"]].copy()
            frame["acc_clean"] = pd.to_numeric(frame["acc_clean"], errors="coerce")
            frame = frame.astype({"acc": float, "n": int, "n_clean": int})
            frames.append(frame.assign(model=label))
    if not frames:
        return pd.DataFrame(columns=CLEAN_COLUMNS)
    return pd.concat(frames, ignore_index=True)[CLEAN_COLUMNS]


def read_usmle_steps(runs: list[Run]) -> pd.DataFrame:
    """Accuracy per USMLE step (the evaluation's subset rows of the USMLE tasks)."""
    rows = []
    for label, summary in eval_summaries(runs):
        part = summary[(summary["level"] == "subset") & summary["benchmark"].isin(USMLE)]
        for _, r in part.iterrows():
            rows.append(
                {
                    "model": label,
                    "protocol": str(r["protocol"]),
                    "benchmark": r["benchmark"],
                    "step": str(r["subset"]),
                    "acc": float(r["acc"]),
                    "stderr": float(r["acc_stderr"]),
                    "n": int(r["n"]),
                }
            )
    return pd.DataFrame(rows)


USMLE = set(task_groups().get("usmle", []))


def devices_per_worker(resources: dict) -> float:
    """GPUs each training worker held (`gpus_per_worker`), or 1 for a CPU worker."""
    return float(resources.get("gpus_per_worker", 1)) if resources["use_gpu"] else 1.0


def tokens_seen(steps: pd.DataFrame) -> int:
    """Non-padding tokens of all steps, all workers (before the `tokens` metric: rate x time,
    each step's count to the nearest token)."""
    if "tokens" in steps:
        return int(steps["tokens"].sum())
    return int((steps["real_tokens_per_s"] * steps["step_time_s"]).round().sum())


def read_training(runs: list[Run]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row of cost figures per trained model, per-step loss history of each)."""
    costs, histories = [], []
    several = len(runs) > 1
    for run in runs:
        for strategy, folder in run.stages("train").items():
            result = json.loads((folder / "train_result.json").read_text())
            config = yaml.safe_load((folder / "config.yaml").read_text())
            steps = pd.read_json(folder / "metrics.jsonl", lines=True)
            label = run.model_label(strategy, several)
            real_tokens = float((steps["real_tokens_per_s"] * steps["step_time_s"]).sum())
            resources = config["resources"]
            stage = json.loads((folder / "stage.json").read_text())
            costs.append(
                {
                    "strategy": label,
                    "data_key": stage.get("inputs", {}).get("data", ""),
                    "tokens": tokens_seen(steps),
                    "label_tokens": int(steps.get("label_tokens", pd.Series([-1])).sum()),
                    "trainable_params": int(result["trainable_params"]),
                    "total_params": int(result["total_params"]),
                    "peak_memory_gb": float(steps["peak_memory_mb"].max()) / 1024,
                    "tokens_per_s": real_tokens / float(steps["step_time_s"].sum()),
                    "wall_s": float(result["wall_time_s"]),
                    "num_workers": int(resources["num_workers"]),
                    "devices_per_worker": devices_per_worker(resources),
                    "device": "GPU" if resources["use_gpu"] else "CPU",
                    "steps": int(steps["step"].max()),
                    "final_loss": float(steps["loss"].iloc[-1]),
                }
            )
            history = steps[["step", "loss"]].copy()
            if "eval_loss" in steps:
                history["eval_loss"] = steps["eval_loss"]
            history.insert(0, "strategy", label)
            histories.append(history)
    if not costs:
        return pd.DataFrame(), pd.DataFrame()
    return pd.DataFrame(costs), pd.concat(histories, ignore_index=True)


AGREEMENT_COLUMNS = ["model", "benchmark", "protocol_a", "protocol_b", "n", "agree"]


def read_agreement(runs: list[Run]) -> pd.DataFrame:
    """Every evaluation's `agreement.csv` (absent before protocols, empty with one)."""
    several = len(runs) > 1
    frames = [
        pd.read_csv(folder / "agreement.csv", keep_default_na=False).assign(
            model=run.model_label(model, several)
        )
        for run in runs
        for model, folder in run.stages("eval").items()
        if (folder / "agreement.csv").is_file()
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS)
    agreement = pd.concat(frames, ignore_index=True)[AGREEMENT_COLUMNS]
    # a model trained once per seed: the mean of its seeds' agreement
    agreement["model"] = agreement["model"].map(lambda m: split_seed(m)[0])
    keys = ["model", "benchmark", "protocol_a", "protocol_b"]
    means = agreement.groupby(keys, sort=False).agg(n=("n", "first"), agree=("agree", "mean"))
    return means.reset_index()[AGREEMENT_COLUMNS]


def read_protocols(runs: list[Run]) -> pd.DataFrame:
    """Per protocol (the evaluations' `eval.json`): how it scores, its compute seconds per
    model (the engine's time on its requests, resumed ones included) and its share of
    generated answers that named no option."""
    rows: dict[str, dict[str, Any]] = {}
    several = len(runs) > 1
    for run in runs:
        for model, folder in run.stages("eval").items():
            record = json.loads((folder / "eval.json").read_text())
            for name, p in record.get("protocols", {}).items():
                row = rows.setdefault(
                    name,
                    {
                        "protocol": name,
                        "scoring": p["scoring"],
                        "prompt_format": p["prompt_format"],
                        "chat template": "yes" if p["chat_template"] else "no",
                    },
                )
                label = run.model_label(model, several)
                row[f"{label} compute (s)"] = round(p["compute_s"], 1)
                unparsed = p.get("unparsed")
                row[f"{label} unparsed (%)"] = "–" if unparsed is None else f"{100 * unparsed:.0f}"
    return pd.DataFrame(list(rows.values()))


def read_data(runs: list[Run]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(per-source counts, removals per benchmark, decontamination settings) of the data stage."""
    counts, removed, settings = [], [], {}
    several = len(runs) > 1
    for run in runs:
        folder = run.stage("data")
        if folder is None:
            continue
        manifest = json.loads((folder / "manifest.json").read_text())
        for source, c in {**manifest["sources"], "TOTAL": manifest["totals"]}.items():
            row = {"source": source, **{k: int(c[k]) for k in DATA_COLUMNS}}
            counts.append({"run": run.label, **row} if several else row)
        decon = manifest["decontamination"]
        for bench, n in sorted(decon.get("per_benchmark", {}).items()):
            row = {"benchmark": bench, "removed records": int(n)}
            removed.append({"run": run.label, **row} if several else row)
        settings[run.label] = {
            k: v for k, v in decon.items() if k not in ("per_benchmark", "overlap")
        }
    return pd.DataFrame(counts), pd.DataFrame(removed), settings


def read_provenance(runs: list[Run]) -> pd.DataFrame:
    """Where each scored benchmark came from (the evaluations' `eval.json`): source, form,
    items scored, items dropped by reason, content hash. One row per distinct benchmark file."""
    rows = []
    for run in runs:
        for folder in run.stages("eval").values():
            record = json.loads((folder / "eval.json").read_text())
            for name, p in record.get("benchmarks", {}).items():
                dropped = ", ".join(f"{k}: {v}" for k, v in sorted(p.get("dropped", {}).items()))
                rows.append(
                    {
                        "benchmark": name,
                        "source": p.get("source", ""),
                        "form": p.get("form", ""),
                        "items": int(p.get("items", 0)),
                        "scored": int(p.get("scored", p.get("items", 0))),
                        "dropped": dropped or "none",
                        "sha256": str(p.get("sha256", ""))[:16],
                    }
                )
    columns = ["benchmark", "source", "form", "items", "scored", "dropped", "sha256"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.drop_duplicates().reset_index(drop=True)


# ---------------------------------------------------------------------------------- numbers
def all_numbers(
    scores: pd.DataFrame, costs: pd.DataFrame, counts: pd.DataFrame, removed: pd.DataFrame
) -> pd.DataFrame:
    """Long table (section, model/source, item, metric, value) of every number in the report."""
    rows = []
    for _, r in with_columns(scores).iterrows():
        for metric in ("acc", "stderr", "n"):
            rows.append(("accuracy", r["column"], r["benchmark"], metric, float(r[metric])))
    for _, r in costs.iterrows():
        for metric, value in r.items():
            if metric not in ("strategy", "device"):
                rows.append(("training", r["strategy"], r["device"], metric, float(value)))
    for _, r in counts.iterrows():
        who = f"{r['run']}/{r['source']}" if "run" in r else r["source"]
        for metric in DATA_COLUMNS:
            rows.append(("data", who, "records", metric, float(r[metric])))
    for _, r in removed.iterrows():
        who = f"{r['run']}/{r['benchmark']}" if "run" in r else r["benchmark"]
        rows.append(("decontamination", who, "records", "removed", float(r["removed records"])))
    return pd.DataFrame(rows, columns=["section", "subject", "item", "metric", "value"])


def clean_numbers(clean: pd.DataFrame) -> pd.DataFrame:
    """The clean-subset table's numbers, in `all_numbers`' layout (section `clean accuracy`)."""
    rows = [
        ("clean accuracy", r["column"], r["benchmark"], metric, float(r[metric]))
        for _, r in with_columns(clean).iterrows()
        for metric in ("acc_clean", "n_clean")
    ]
    return pd.DataFrame(rows, columns=["section", "subject", "item", "metric", "value"])


def agreement_numbers(agreement: pd.DataFrame) -> pd.DataFrame:
    """The agreement table's numbers (section `agreement`, subject `model: a ~ b`)."""
    rows = [
        ("agreement", f"{r['model']}: {r['protocol_a']} ~ {r['protocol_b']}", r["benchmark"],
         metric, float(r[metric]))
        for _, r in agreement.iterrows()
        for metric in ("agree", "n")
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["section", "subject", "item", "metric", "value"])


# ---------------------------------------------------------------------------------- writing
def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip()}\n"


def headline(scores: pd.DataFrame) -> str:
    """Per protocol, one sentence: each fine-tune's average against the base model's."""
    average = with_average(scores)
    average = average[average["level"] == "average"]
    several = len(protocols_of(average)) > 1
    sentences = []
    for protocol in protocols_of(average):
        part = average[average["protocol"] == protocol] if "protocol" in average else average
        part = part.set_index("model")
        if "base" not in part.index:
            continue
        base = part.loc["base"]
        lines = [f"base {100 * base['acc']:.1f}%"]
        for model in order_models(list(part.index)):
            if model != "base":
                delta = 100 * (part.loc[model, "acc"] - base["acc"])
                lines.append(f"{model} {100 * part.loc[model, 'acc']:.1f}% ({delta:+.1f} points)")
        sentences.append(f"{f'`{protocol}`, a' if several else 'A'}verage over all benchmarks: "
                         + "; ".join(lines) + ".")  # fmt: skip
    return " ".join(sentences)


PROTOCOL_WORDS = {
    ("loglikelihood", "multiple_choice"): "the log-likelihood of each option after "
    "lm-evaluation-harness's prompts (lettered tasks score the option letters)",
    ("loglikelihood", "cloze"): "the log-likelihood of each option's text after the question "
    "alone (cloze, as lm-eval's mmlu_continuation)",
    ("generate", "multiple_choice"): "a greedy answer of up to {max_new_tokens} tokens to "
    "lm-eval's prompts, the option it names parsed (an unparsed answer counts as wrong)",
    ("generate", "cot"): "zero-shot chain of thought: every option listed, up to "
    "{max_new_tokens} tokens of reasoning ending in 'the answer is (X)' (lm-eval's mmlu_pro "
    "prompt), the last answer it gives parsed (an unparsed answer counts as wrong)",
}
"""How the report describes each (scoring, prompt_format) protocol."""


def eval_settings(config: dict[str, Any]) -> str:
    """How the first run scored its benchmarks: shots, and each protocol in words."""
    from med42ray.config import EvalConfig

    ev = EvalConfig.model_validate(config.get("eval", {}))
    chat = ", in the model's chat template (lm-eval's --apply_chat_template)"
    words = [
        f"`{p.label}`: "
        + PROTOCOL_WORDS[(p.scoring, p.prompt_format)].format(max_new_tokens=ev.max_new_tokens)
        + (chat if p.chat_template else "")
        for p in ev.resolved_protocols()
    ]
    shots = "Zero" if ev.num_fewshot == 0 else str(ev.num_fewshot)
    return f"{shots}-shot. Protocols: " + "; ".join(words) + "."


GROUP_NOTE = (
    " MMLU clinical and USMLE are given both ways: the unweighted mean of their members (the "
    "paper's; standard error sqrt(sum se_i^2) / k) and the mean weighted by the members' item "
    "counts (lm-eval's `weight_by_size`, as its `multimedqa` group aggregates; its pooled "
    "standard error)."
)


def accuracy_sections(runs: list[Run], scores: pd.DataFrame, config: dict, out: Path) -> list[str]:
    """The accuracy table (paper order, a column group per protocol), its bar chart and the
    USMLE-by-step table."""
    columns = column_order(scores)
    parts = [
        _section(
            "Accuracy (%, ± standard error)",
            eval_settings(config)
            + GROUP_NOTE
            + "\n\n"
            + to_markdown(accuracy_table(scores))
            + "\n\n"
            + headline(scores)
            + "\n\n![accuracy](accuracy.png)",
        )
    ]
    order = {b: i for i, (b, _) in enumerate(PAPER_ROWS)}
    plot_scores = with_average(scores)
    plot_scores = plot_scores[plot_scores["benchmark"].isin(order)]
    plot_scores = plot_scores.sort_values("benchmark", key=lambda b: b.map(order), kind="stable")
    models = order_models(list(dict.fromkeys(scores["model"])))
    accuracy_bars(plot_scores, out / "accuracy.png", models, dict(PAPER_ROWS))
    steps = read_usmle_steps(runs)
    if len(steps):
        steps = with_columns(steps)
        wide = steps.assign(cell=steps.apply(_cell, axis=1)).pivot_table(
            index=["benchmark", "step"], columns="column", values="cell", aggfunc="first"
        )
        wide = wide[[c for c in columns if c in wide.columns]].reset_index()
        parts.append(_section("USMLE by step", to_markdown(wide)))
    return parts


AGREEMENT_MEANING = (
    "How often two protocols pick the same option for the same item: per benchmark and over "
    "every item pooled, the share of items (%) where both predictions name the same option "
    "(an unparsed generated answer agrees with nothing), for base / full / LoRA. Agreement "
    "far above the accuracies means the protocols fail alike; near chance, they measure "
    "different things."
)


def agreement_section(agreement: pd.DataFrame) -> str:
    """The protocols' agreement per benchmark and model."""
    models = " / ".join(order_models(list(dict.fromkeys(agreement["model"]))))
    body = AGREEMENT_MEANING.replace("base / full / LoRA", models)
    table = to_markdown(agreement_table(agreement))
    return _section("Agreement between protocols", body + "\n\n" + table)


def protocols_section(protocols: pd.DataFrame) -> str:
    """Each protocol's settings and the engine time it took per model."""
    return _section(
        "Protocols",
        "Compute: the engine's seconds on each protocol's requests (summed over actors and "
        "batches; scored once, resumed parts included). Unparsed: generated answers that named "
        "no option (counted wrong).\n\n" + to_markdown(protocols),
    )


CLEAN_MEANING = (
    "An item is *clean* when no training record the data stage kept (the `train` split, after "
    "decontamination) shares a single non-boilerplate n-gram with it (the decontamination "
    "index's n-grams; those in many items excluded), nor matches it whole (GPT-3's "
    "contamination analysis); the items it does touch are listed in the data stage's "
    "`overlap.json`. Without that file (decontamination off) every item counts as clean. "
    "Cells: accuracy on all items (n) / on the clean subset (n clean), %; – where no item is "
    "clean."
)


def clean_section(clean: pd.DataFrame) -> str:
    """Accuracy on all items and on the clean subset, per benchmark and model."""
    return _section(
        "Accuracy on the clean subset", CLEAN_MEANING + "\n\n" + to_markdown(clean_table(clean))
    )


def training_section(costs: pd.DataFrame, per_point: pd.DataFrame) -> str:
    """Cost per strategy, device-hours per point gained over the base, the loss curves."""
    body = (
        "Throughput counts non-padding tokens over all workers; device-hours are wall "
        "time x workers x devices per worker (GPUs; 1 for a CPU worker).\n\n"
        + to_markdown(cost_table(costs))
    )
    if len(per_point):
        first = per_point[per_point["protocol"] == per_point["protocol"].iloc[0]]
        table = pd.DataFrame(
            {
                "strategy": first["strategy"],
                "benchmarks": first["benchmark"].map(row_title),
                "points gained over base": first["gain_points"].round(1),
                "device-hours per point": first["device_hours_per_point"].map(
                    lambda v: f"{v:.4g}" if v == v else "no gain"
                ),
            }
        )
        body += (
            f"\n\nCost per accuracy point (`{first['protocol'].iloc[0]}`; the gain is the "
            "paired difference over the base model):\n\n" + to_markdown(table)
        )
    return _section("Training cost per strategy", body + "\n\n![loss curves](loss_curves.png)")


def data_section(counts: pd.DataFrame, removed: pd.DataFrame, decon: dict[str, Any]) -> str:
    """Records per source, decontamination removals per benchmark, and the settings."""
    settings = "; ".join(
        f"{k}: {', '.join(f'{key}={v}' for key, v in s.items())}" for k, s in decon.items()
    )
    body = "Records per source (read = kept + every removed category).\n\n" + to_markdown(counts)
    if len(removed):
        body += "\n\nDecontamination removals per benchmark:\n\n" + to_markdown(removed)
    body += f"\n\nDecontamination settings: {settings}."
    return _section("Data", body)


#: measured, not computed: they vary from run to run, so they stay out of `numbers.csv` (two
#: runs of one config give the identical file) and live in training.csv / cost_per_point.csv
MEASURED = ("peak_memory_gb", "tokens_per_s", "wall_s")


def write_tables(out: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)


def build_report(run_dirs: list[Path], out: Path, title: str | None = None) -> Path:
    """Write `report.md`, its figures (PNG) and tables (CSV) into `out`; return `out`."""
    runs = load_runs([Path(d) for d in run_dirs])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeded = read_scores(runs)
    scores, seeds = mean_over_seeds(seeded), seed_table(seeded)
    costs, history = read_training(runs)
    counts, removed, decon = read_data(runs)
    predictions = read_predictions(eval_folders(runs))
    paired = compare(predictions)
    per_point = cost_per_point(paired, costs)
    clean, agreement = read_clean_scores(runs), read_agreement(runs)
    protocols, provenance = read_protocols(runs), read_provenance(runs)
    several = len(runs) > 1
    curves = read_curves(
        (run.model_label(label, several), folder)
        for run in runs
        for label, folder in run.stages("train").items()
    )
    write_tables(
        out,
        {
            "accuracy": seeded,
            "seeds": seeds,
            "paired": paired,
            "cost_per_point": per_point,
            "agreement": agreement,
            "protocols": protocols,
            "training": costs,
            "loss_history": history,
            "curves": curves,
            "data": counts,
            "decontamination": removed,
            "benchmarks": provenance,
        },
    )
    fixed = costs.drop(columns=[c for c in (*MEASURED, "data_key") if c in costs])
    numbers = all_numbers(with_average(scores), fixed, counts, removed)
    extra = [
        numbers_of(table)
        for numbers_of, table in [
            (clean_numbers, clean),
            (agreement_numbers, agreement),
            (paired_numbers, paired),
            (seed_numbers, seeds),
            (curve_numbers, curves),
        ]
        if len(table)
    ]
    numbers = pd.concat([numbers, *extra], ignore_index=True)
    numbers.to_csv(out / "numbers.csv", index=False)

    first = yaml.safe_load((runs[0].folder / "config.yaml").read_text())
    parts = [f"# {title or first.get('report', {}).get('title', 'Med42 report')}\n"]
    parts.append(
        "Runs: "
        + ", ".join(f"`{r.folder.resolve()}` ({r.index.get('name')})" for r in runs)
        + ". Every number below comes from the stage outputs of these runs; all of them are "
        "in `numbers.csv`, except the measured times, throughputs and memory (`training.csv`, "
        "`cost_per_point.csv`).\n"
    )
    if len(paired):
        benchmarks = predictions["benchmark"].nunique()
        parts.append(_section("Headline", comparison_headline(paired, costs, benchmarks)))
    if len(scores):
        parts += accuracy_sections(runs, scores, first, out)
    if len(seeds):
        parts.append(_section("Seeds", seed_section(seeds)))
    if len(paired):
        parts.append(_section("Paired differences (points)", paired_section(paired)))
    if len(costs):
        parts.append(_section("Matched budgets", budget_section(costs)))
    if len(agreement):
        parts.append(agreement_section(agreement))
    if len(protocols):
        parts.append(protocols_section(protocols))
    if len(clean):
        parts.append(clean_section(clean))
    if len(costs):
        parts.append(training_section(costs, per_point))
        loss_curves(history, out / "loss_curves.png")
    if len(curves):
        parts.append(_section("Benchmark accuracy during training", curve_section(curves, out)))
    if len(counts):
        parts.append(data_section(counts, removed, decon))
    parts += appendix_sections(runs, provenance)
    (out / "report.md").write_text("\n".join(parts), encoding="utf-8")
    write_html(out)
    log.info("report written to %s (and report.html)", out / "report.md")
    return out


def appendix_sections(runs: list[Run], provenance: pd.DataFrame) -> list[str]:
    """Where the benchmarks came from, the package versions and the runs' configs."""
    parts = []
    if len(provenance):
        parts.append(
            _section(
                "Benchmarks scored",
                "Source, form detected, items (scored after any `limit`), items dropped by "
                "the loader and why, and a content hash of the items.\n\n"
                + to_markdown(provenance),
            )
        )
    parts.append(_section("Package versions", _versions_table(runs)))
    configs = "\n\n".join(
        f"`{r.label}`:\n\n```yaml\n{(r.folder / 'config.yaml').read_text()}```" for r in runs
    )
    parts.append(_section("Configs", configs))
    return parts


def _cell(row: pd.Series) -> str:
    return f"{100 * row['acc']:.1f} ± {100 * row['stderr']:.1f} (n={row['n']})"


def _versions_table(runs: list[Run]) -> str:
    """The versions each run recorded when it started."""
    table = pd.DataFrame({r.label: r.index.get("versions", {}) for r in runs}).rename_axis(
        "package"
    )
    return to_markdown(table.reset_index().fillna("–"))
