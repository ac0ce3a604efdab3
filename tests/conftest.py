"""Shared fixtures: one Ray session and one tiny model per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build artefacts (the tiny model) into a per-run cache, never the user's."""
    path = tmp_path_factory.mktemp("med42ray-cache")
    os.environ["MED42RAY_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_config():
    from med42ray.config import load_config

    return load_config(CONFIGS / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_model_path(tiny_config) -> Path:
    from med42ray.models import build_tiny_model

    return build_tiny_model(tiny_config.model.tiny)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole run (2 CPUs, like the CI machine)."""
    import ray

    from med42ray.cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
