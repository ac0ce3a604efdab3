from pathlib import Path

import pytest

from med42ray.config import ConfigError
from med42ray.tune.space import apply_trial, load_sweep, param_space

from .conftest import REPO


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_validate(path: Path) -> None:
    cfg = load_sweep(path)
    space = param_space(cfg)
    assert space and set(space) == set(cfg.tune.search_space)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text.replace("CFG", str(REPO / "configs" / "tiny.yaml")))
    return path


def test_overrides_and_trial_values_apply(tmp_path: Path) -> None:
    cfg = load_sweep(
        write(
            tmp_path,
            "experiment: CFG\noverrides: {train.max_steps: 3}\n"
            "tune:\n  search_space:\n"
            "    train.lora.r: {choice: [4, 8]}\n",
        )
    )
    assert cfg.train.max_steps == 3
    trial = apply_trial(cfg, {"train.lora.r": 4, "train.strategy": "lora"})
    assert (trial.train.lora.r, trial.train.strategy, trial.train.max_steps) == (4, "lora", 3)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("train.lora.rank: {choice: [4]}", r"train\.lora\.rank: unknown key"),
        ("train.lora.r: {choice: [0, 8]}", r"train\.lora\.r: Input should be greater than 0"),
        ("train.optimizer.lr: {normal: [0, 1]}", r"expected one of"),
        ("train.optimizer.lr: {loguniform: [1.0e-5]}", r"loguniform takes \[low, high\]"),
    ],
)
def test_bad_search_spaces_name_the_field(tmp_path: Path, space: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sweep(write(tmp_path, f"experiment: CFG\ntune:\n  search_space:\n    {space}\n"))


def test_unknown_sweep_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trials: unknown key"):
        load_sweep(write(tmp_path, "experiment: CFG\ntrials: 3\n"))


def test_experiment_config_is_a_sweep_too() -> None:
    cfg = load_sweep(REPO / "configs" / "tiny.yaml")
    assert cfg.name == "tiny" and param_space(cfg) == {}
