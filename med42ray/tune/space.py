"""Sweep files and search spaces: YAML in `sweeps/` -> validated config + Ray Tune domains.

A sweep file names the experiment config it starts from, optional fixed `overrides`, and a
`tune` section (`TuneConfig`). Each search-space key is a dotted config field; a trial's config
is the experiment with the trial's values set, validated like any other config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from med42ray.config import ConfigError, ExperimentConfig, load_config
from med42ray.config import with_overrides as apply_trial

SWEEP_KEYS = {"experiment", "overrides", "tune"}


def load_sweep(path: str | Path, overlays: Sequence[str | Path] = ()) -> ExperimentConfig:
    """The experiment config of a sweep file, with its overrides and `tune` section applied.

    An experiment config (with its own `tune` section) is accepted as a sweep file too.
    `overlays` (YAML files) are merged onto the experiment config first, as `load_config` does.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read sweep: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict) or "experiment" not in raw:
        cfg = load_config(path, overlays=overlays)
    else:
        unknown = sorted(set(raw) - SWEEP_KEYS)
        if unknown:
            raise ConfigError(f"{path}: {unknown[0]}: unknown key (expected {sorted(SWEEP_KEYS)})")
        experiment = resolve_relative(path, raw["experiment"])
        overrides = dict(raw.get("overrides") or {})
        for key, value in (raw.get("tune") or {}).items():
            overrides[f"tune.{key}"] = value
        cfg = load_config(experiment, overrides, overlays)
    check_search_space(cfg, str(path))
    return cfg


def resolve_relative(sweep: Path, target: str) -> Path:
    """`experiment:` is relative to the sweep file, or to the working directory."""
    beside = (sweep.parent / target).resolve()
    return beside if beside.is_file() else Path(target)


def check_search_space(cfg: ExperimentConfig, source: str) -> None:
    """Every search-space key must be a config field that accepts the domain's values."""
    for key, domain in cfg.tune.search_space.items():
        kind, values = next(iter(domain.items()))
        samples = values[:2] if kind not in ("choice", "grid") else values
        for value in samples:
            apply_trial(cfg, {key: value}, source=f"{source}: tune.search_space")


def param_space(cfg: ExperimentConfig) -> dict[str, Any]:
    """Ray Tune domains for `cfg.tune.search_space` (flat dotted keys)."""
    from ray import tune

    builders = {
        "loguniform": lambda v: tune.loguniform(*v),
        "uniform": lambda v: tune.uniform(*v),
        "quniform": lambda v: tune.quniform(*v),
        "randint": lambda v: tune.randint(*v),
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {
        key: builders[kind](values)
        for key, domain in cfg.tune.search_space.items()
        for kind, values in domain.items()
    }
