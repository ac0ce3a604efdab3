import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from med42ray.cli import app

from .conftest import CONFIGS, REPO, small_set_args

runner = CliRunner()
COMMANDS = [
    [],
    ["config"],
    ["config", "validate"],
    ["config", "show"],
    ["model"],
    ["model", "build-tiny"],
    ["doctor"],
    ["data"],
    ["data", "prepare"],
    ["train"],
    ["eval"],
    ["sweep"],
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("med42ray")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "med42ray")
def test_help(args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_console_script_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("config", "model", "doctor", "data", "train", "eval", "sweep"):
        assert name in result.stdout


def test_validate_all_shipped_configs() -> None:
    paths = [str(p) for p in sorted(CONFIGS.glob("*.yaml"))]
    result = runner.invoke(app, ["config", "validate", *paths])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok  ") == len(paths)


def test_show_applies_overrides() -> None:
    tiny = str(CONFIGS / "tiny.yaml")
    result = runner.invoke(
        app,
        [
            "config",
            "show",
            tiny,
            "--set",
            "train.strategy=lora",
            "--set",
            "train.lora.target_modules=[q_proj, v_proj]",
        ],
    )
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["train"]["strategy"] == "lora"
    assert shown["train"]["lora"]["target_modules"] == ["q_proj", "v_proj"]


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  strategy: qlora\n  epochs: 0\n")
    result = run_cli("config", "validate", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {bad}: train.strategy: Input should be")
    assert "train.epochs" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["config", "validate", "nope.yaml"], "error: nope.yaml: cannot read config"),
        (["config", "show", "configs/tiny.yaml", "--set", "epochs"], "error: --set expects"),
        (
            ["config", "show", "configs/tiny.yaml", "--set", "train.bogus=1"],
            "error: configs/tiny.yaml: train.bogus: unknown key",
        ),
    ],
)
def test_error_paths(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message), result.stderr


def test_unknown_command_fails() -> None:
    result = run_cli("frobnicate")
    assert result.returncode != 0


def test_doctor_takes_a_real_step(ray_session, tiny_model_path: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["doctor", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path), *small_set_args()]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "doctor.json").read_text())
    step = summary["step"]
    assert step["model"] == str(tiny_model_path)
    assert step["loss_after"] < step["loss_before"]
    assert summary["ray_resources"]["CPU"] == 2
    assert summary["packages"]["torch"].startswith("2.")


def test_eval_command_writes_tables(ray_session, tiny_model_path: Path, tmp_path: Path) -> None:
    bench = REPO / "data" / "tiny" / "benchmarks" / "medqa.jsonl"
    result = runner.invoke(
        app,
        [
            "eval",
            str(CONFIGS / "tiny.yaml"),
            "--out",
            str(tmp_path),
            "--set",
            f"eval.benchmarks=[{{name: medqa, path: {bench}}}]",
            *small_set_args(),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| task | medqa |" in result.output
    assert (tmp_path / "summary.csv").is_file() and (tmp_path / "predictions.parquet").is_file()


def test_data_prepare_bad_source_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "data",
        "prepare",
        "configs/tiny.yaml",
        "--out",
        str(tmp_path / "d"),
        "--set",
        "data.sources=[{name: x, path: /nope/*.jsonl, format: qa}]",
        *small_set_args(),
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "/nope/*.jsonl" in last


def test_train_without_data_is_one_line(tmp_path: Path) -> None:
    result = run_cli("train", "configs/tiny.yaml", "--out", str(tmp_path / "full"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: no --data given and no prepared data at {tmp_path / 'data'}/train"
    )


def test_benchmarks_show_and_export_what_is_scored(tmp_path: Path) -> None:
    """`benchmarks show` names each benchmark's source, form, items, hash and first prompt;
    `benchmarks export` writes the canonical items that evaluation and decontamination use."""
    from med42ray.benchmarks import load_benchmark

    # the pinned small model (no minutes-long base training for a tokenizer), one chat protocol
    chat = ["--set", "eval.protocols=[{chat_template: true}]"]
    shown = runner.invoke(
        app, ["benchmarks", "show", str(CONFIGS / "tiny.yaml"), *small_set_args(), *chat]
    )
    assert shown.exit_code == 0, shown.output
    assert "medqa (scored)" in shown.output and "form: json_lines" in shown.output
    assert shown.output.count("first item, as scored:") == 12
    exported = runner.invoke(
        app, ["benchmarks", "export", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path)]
    )
    assert exported.exit_code == 0, exported.output
    rows = [json.loads(x) for x in (tmp_path / "headqa.jsonl").read_text().splitlines()]
    items = load_benchmark("headqa", str(REPO / "data/tiny/benchmarks/headqa.jsonl"))
    assert [r["id"] for r in rows] == [i.id for i in items]
    assert [r["choices"][r["gold"]] for r in rows] == [i.gold_text for i in items]
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["headqa"]["items"] == len(items)


def test_train_command_scores_its_curve_and_ends_on_its_result(tmp_path: Path) -> None:
    """`med42ray train` with `train.curve` on: the curve is scored (the trainer gets the
    validation task), Ray's output stays in the stage's log, and the console ends on the
    result's JSON (Ray is shut down into the log before it is printed)."""
    import json

    fixture = REPO / "tests" / "fixtures" / "train" / "chat.jsonl"
    out = tmp_path / "train-full"
    settings = {
        "train.max_steps": "2",
        "train.checkpoint_every": "2",
        "train.deepspeed.enabled": "false",
        "resources.num_workers": "1",
        "train.curve": "{eval_every_checkpoint: 1, benchmarks: [medqa], limit: 4}",
    }
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    args = ("train", "configs/tiny.yaml", "--out", str(out), "--data", str(fixture))
    result = run_cli(*args, *small_set_args(), *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("train-full: running in") and lines[-1] == "}"
    assert json.loads(result.stdout[result.stdout.index("{") :])["final_metrics"]["step"] == 2
    assert "Ray" not in result.stdout + result.stderr and "pid=" not in result.stderr
    assert (out / "curve.csv").read_text().splitlines()[1].startswith("2,")
    assert "Reporting training result" in (tmp_path / "logs" / "train-full.log").read_text()
