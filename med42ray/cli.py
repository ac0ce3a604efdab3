"""The `med42ray` command: one thin sub-command per stage, each taking `CONFIG --out DIR`.

Sub-commands parse arguments, load the config with `load_config`, and call the stage's Python
entry point; no stage logic lives here. Bad input exits non-zero with a one-line reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from med42ray.config import ConfigError, load_config

app = typer.Typer(
    name="med42ray",
    help="Med42 on Ray: prepare data, fine-tune (full or LoRA), evaluate and report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect experiment configs.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True)
model_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)
benchmarks_app = typer.Typer(
    help="See exactly what is scored and decontaminated.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(benchmarks_app, name="benchmarks")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (YAML).", show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder of this stage.")]
RunOutOpt = Annotated[
    str,
    typer.Option(
        "--out", "-o", help="Run folder: local, or object storage (s3://bucket/runs/NAME)."
    ),
]
DataOpt = Annotated[
    str | None, typer.Option(help="Chat-schema JSONL/Parquet (default: OUT/../data/train).")
]
EvalDataOpt = Annotated[str | None, typer.Option(help="Held-out chat data (eval loss).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field: `--set train.epochs=1` (YAML value)."),
]
OverlayOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--set-file",
        help="A YAML overlay merged onto the config before `--set` (e.g. a cluster's "
        "resources and storage, kept apart from the recipe); repeatable.",
    ),
]

VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Show Ray's and the libraries' output here too (by default it goes to the run "
        "folder's logs/<stage>.log and only stage lines, progress and warnings are shown).",
    ),
]


class UsageFailure(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`key.path=value` pairs, values parsed as YAML scalars (`1`, `true`, `[a, b]`)."""
    import yaml

    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageFailure(f"--set expects key.path=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@config_app.command("validate")
def config_validate(
    configs: Annotated[list[Path], typer.Argument(show_default=False)],
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also open every source and load and check every benchmark (no Ray, no "
            "training): what `run` checks before it reads any corpus.",
        ),
    ] = False,
    overrides: SetOpt = None,
    overlays: OverlayOpt = None,
) -> None:
    """Validate one or more experiment configs; print `ok` per file."""
    from med42ray.experiment import check_inputs

    for path in configs:
        cfg = load_config(path, parse_overrides(overrides), overlays or [])
        if deep:
            summary = check_inputs(cfg)
            typer.echo(f"ok  {path}  ({summary_line(summary)})")
        else:
            typer.echo(f"ok  {path}")


def summary_line(summary: dict[str, Any]) -> str:
    """`check_inputs`'s summary in a few words."""
    sources = summary.get("sources", {})
    benchmarks = summary.get("benchmarks", {})
    items = sum(int(b.get("items", 0)) for b in benchmarks.values())
    return f"{len(sources)} sources, {len(benchmarks)} benchmarks, {items} items"


@benchmarks_app.command("show")
def benchmarks_show(
    config: ConfigArg, overrides: SetOpt = None, overlays: OverlayOpt = None
) -> None:
    """Each benchmark of CONFIG: source, form detected, items, dropped, checksum, first prompt."""
    from med42ray.eval.catalog import describe, format_rows

    cfg = load_config(config, parse_overrides(overrides), overlays or [])
    tokenizer = None
    if any(p.chat_template for p in cfg.eval.resolved_protocols()):  # `protocols` or the axes
        from med42ray.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    typer.echo(format_rows(describe(cfg, tokenizer)))


@benchmarks_app.command("export")
def benchmarks_export(
    config: ConfigArg, out: OutOpt, overrides: SetOpt = None, overlays: OverlayOpt = None
) -> None:
    """Write the canonical items of CONFIG's benchmarks as JSONL (+ provenance.json) into OUT."""
    from med42ray.eval.catalog import export

    cfg = load_config(config, parse_overrides(overrides), overlays or [])
    provenance = export(cfg, out)
    for name, row in provenance.items():
        typer.echo(f"{out / (name + '.jsonl')}: {row['items']} items ({row['sha256'][:12]})")


@config_app.command("show")
def config_show(config: ConfigArg, overrides: SetOpt = None, overlays: OverlayOpt = None) -> None:
    """Print the resolved config (defaults filled in, overrides applied) as YAML."""
    typer.echo(load_config(config, parse_overrides(overrides), overlays or []).to_yaml(), nl=False)


@model_app.command("build-tiny")
def model_build_tiny(
    config: ConfigArg, overrides: SetOpt = None, overlays: OverlayOpt = None
) -> None:
    """Build the embedded tiny model of CONFIG (cached) and print its folder."""
    from med42ray.tiny import build_tiny_model

    cfg = load_config(config, parse_overrides(overrides), overlays or [])
    typer.echo(str(build_tiny_model(cfg.model.tiny)))


@data_app.command("prepare")
def data_prepare(
    config: ConfigArg,
    out: OutOpt,
    overrides: SetOpt = None,
    overlays: OverlayOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Normalise, filter, deduplicate and decontaminate the config's corpora into OUT."""
    from med42ray.data import prepare_data
    from med42ray.data.manifest import format_summary
    from med42ray.experiment import describe_data

    cfg = load_config(config, parse_overrides(overrides), overlays or [])
    with stage_console(out, verbose) as shown:
        manifest = prepare_data(cfg, out)
        shown.stage_finished(out.name, manifest["timings_s"]["total"], describe_data(manifest))
    typer.echo(format_summary(manifest))


@app.command("train")
def train_command(
    config: ConfigArg,
    out: OutOpt,
    strategy: Annotated[str | None, typer.Option(help="`full` or `lora`.")] = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    overrides: SetOpt = None,
    overlays: OverlayOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Fine-tune the config's model (full under DeepSpeed ZeRO, or LoRA) on Ray Train."""
    from med42ray.checkpoint_eval import curve_validation
    from med42ray.train import run_training

    extra = parse_overrides(overrides)
    if strategy:
        extra["train.strategy"] = strategy
    cfg = load_config(config, extra, overlays or [])
    train_data, held_out = resolve_train_data(out, data, eval_data)
    with stage_console(out, verbose) as shown:
        validation = curve_validation(cfg, str(out.resolve()))
        result = run_training(cfg, train_data, out, eval_data=held_out, validation=validation)
        shown.stage_finished(out.name, result.wall_time_s)
    typer.echo(json.dumps(result.to_json(), indent=2, default=str))


@contextlib.contextmanager
def stage_console(out: Path, verbose: bool):
    """The console of a one-stage command: its output in `OUT/../logs/<OUT name>.log` (where
    `run` keeps a stage's), a first line saying where it runs; Ray is shut down into that log
    before the command prints its result (its last forwarded lines would follow it)."""
    from med42ray.console import end_quietly, run_console

    out = Path(out)
    typer.echo(f"{out.name}: running in {out}  (log: {out.parent / 'logs' / out.name}.log)")
    with run_console(out.parent / "logs", verbose, name=out.name) as shown:
        yield shown
    end_quietly(restore=True)


def resolve_train_data(out: Path, data: str | None, eval_data: str | None):
    """`--data`, else the data stage's shards beside OUT (`med42ray data prepare --out`)."""
    if data:
        return data, eval_data
    prepared = out.parent / "data"
    if not (prepared / "train").is_dir():
        raise UsageFailure(f"no --data given and no prepared data at {prepared}/train")
    held_out = prepared / "eval"
    return str(prepared / "train"), eval_data or (str(held_out) if held_out.is_dir() else None)


@app.command("sweep")
def sweep_command(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML (sweeps/) or experiment config.")],
    out: RunOutOpt,
    resume: Annotated[bool, typer.Option(help="Finish an interrupted sweep.")] = False,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    overrides: SetOpt = None,
    overlays: OverlayOpt = None,
) -> None:
    """Run a Ray Tune sweep whose trials launch the train stage's TorchTrainer."""
    from med42ray.stages import RunFolder
    from med42ray.tune.space import apply_trial, load_sweep
    from med42ray.tune.sweep import run_sweep

    cfg = apply_trial(
        load_sweep(sweep, overlays or []), parse_overrides(overrides), source=str(sweep)
    )
    folder = RunFolder.open(out)
    if folder.remote and not data:
        raise UsageFailure("a sweep into object storage needs --data (e.g. a run's data-*/train)")
    if folder.remote and not cfg.resources.storage_path:  # trials' checkpoints and exports
        cfg = apply_trial(cfg, {"resources.storage_path": f"{folder.remote}/ray_results"})
    train_data, held_out = resolve_train_data(folder.local, data, eval_data)
    run_sweep(cfg, folder.local, train_data, held_out, resume=resume)
    for name in ("trials.csv", "trials.md", "best"):
        folder.publish(name)
    typer.echo((folder.local / "trials.md").read_text())


@app.command("eval")
def eval_command(
    config: ConfigArg,
    out: OutOpt,
    model: Annotated[str | None, typer.Option(help="Model folder or hub id to score.")] = None,
    adapter: Annotated[str | None, typer.Option(help="PEFT LoRA adapter on top.")] = None,
    engine: Annotated[str | None, typer.Option(help="`hf` or `vllm`.")] = None,
    overrides: SetOpt = None,
    overlays: OverlayOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Score a model (base, full fine-tune, LoRA adapter or merged) on the config's benchmarks."""
    import time

    from med42ray.eval import run_eval

    extra = parse_overrides(overrides)
    if engine:
        extra["eval.engine"] = engine
    cfg = load_config(config, extra, overlays or [])
    started = time.perf_counter()
    with stage_console(out, verbose) as shown:
        run_eval(cfg, out, model=model, adapter=adapter)
        shown.stage_finished(out.name, time.perf_counter() - started)
    typer.echo((out / "summary.md").read_text())


@app.command("run")
def run_command(
    config: ConfigArg,
    out: RunOutOpt,
    overrides: SetOpt = None,
    overlays: OverlayOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The whole experiment: data, full and LoRA fine-tuning, evaluation of all, report.

    Stages are cached in OUT by their inputs: rerunning skips what finished and resumes what
    was interrupted. The console shows each stage and its progress; everything else is in
    OUT/logs/<stage>.log (`--verbose` shows it here too).
    """
    from med42ray.console import run_console
    from med42ray.experiment import run_experiment
    from med42ray.report.summary import average_lines
    from med42ray.stages import LOGS_DIR, RunFolder

    cfg = load_config(config, parse_overrides(overrides), overlays or [])
    folder = RunFolder.open(out)
    logs = folder.location_of(folder.local / LOGS_DIR)
    typer.echo(f"med42ray run {config} -> {folder.location}  (logs: {logs}/)")
    with run_console(folder.local / LOGS_DIR, verbose):
        report = run_experiment(cfg, out)
    typer.echo("average accuracy over all benchmarks:")
    for line in average_lines(report):
        typer.echo(f"  {line}")
    where = folder.location_of(report)
    typer.echo(f"report: {where}/report.md\n        {where}/report.html")


@app.command("report")
def report_command(
    runs: Annotated[
        list[str], typer.Argument(help="Run folders of `med42ray run` (local or s3://...).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Default: RUN_DIR/report for one run.")
    ] = None,
) -> None:
    """Rebuild the report from finished runs; several runs are compared side by side."""
    from med42ray.report import build_report
    from med42ray.stages import RunFolder

    folders = [RunFolder.open(run) for run in runs]
    for folder in folders:
        folder.fetch()  # a remote run: its tables, not its shards or weights
    if out is None:
        if len(runs) > 1:
            raise UsageFailure("comparing several runs needs --out")
        out = folders[0].local / "report"
    build_report([f.local for f in folders], out)
    if len(folders) == 1 and out == folders[0].local / "report":
        folders[0].publish("report")
        out_location = folders[0].location_of(out)
    else:
        out_location = str(out)
    typer.echo(f"report: {out_location}/report.md")


@app.command("status")
def status_command(
    out: Annotated[str, typer.Argument(help="Run folder of `med42ray run` (local or s3://...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Where a run stands: each stage's state, wall time, folder, log and training progress.

    Works while the run goes on and after it finished, failed or was killed.
    """
    from med42ray.status import format_status, run_status

    status = run_status(out)
    typer.echo(json.dumps(status, indent=2) if as_json else format_status(status))


@app.command()
def doctor(
    config: ConfigArg,
    out: OutOpt = Path("outputs/doctor"),
    overrides: SetOpt = None,
    overlays: OverlayOpt = None,
):
    """Check the set-up end to end: config, Ray, model load, one real optimiser step."""
    from med42ray.doctor import run_doctor

    cfg = load_config(config, parse_overrides(overrides), overlays or [])
    summary = run_doctor(cfg, out)
    typer.echo(json.dumps(summary, indent=2))


def _stage_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input to a stage: shown as one line, exit code 2."""
    from med42ray.benchmarks import BenchmarkError
    from med42ray.data import DataError

    return (DataError, BenchmarkError, FileExistsError)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: known failures become one-line errors and non-zero exits."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from med42ray.console import end_quietly

    try:
        app(args=argv, standalone_mode=True)
    except (ConfigError, UsageFailure, FileNotFoundError, *_stage_errors()) as err:
        typer.echo("error: " + "; ".join(str(err).splitlines()), err=True)
        sys.exit(2)
    finally:
        end_quietly()


if __name__ == "__main__":
    main()
