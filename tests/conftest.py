"""Shared fixtures: one Ray session and one tiny model per test run.

Tests never follow the demo's size: `configs/tiny.yaml` may grow (a bigger tiny model, base
pre-training, more epochs), so every test that trains, sweeps or scores loads it with the
pinned overrides below (`SMALL`): the random-weight 128/256/2-layer/2-head Llama and a short
run. `tiny_config` and `tiny_model_path` are that pinned config and its model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from med42ray.cluster import use_local_train_env

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# What `init_ray` sets for a local Ray (fewer actors per fit, faster polls), set here too so
# that every process the tests start (job drivers, sweep trials) inherits it. The tests report
# every step (`train.log_every: 1`) and a report waits for the controller's next poll, so they
# poll faster still: ~2 s less per fit.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
use_local_train_env()


def _small() -> dict[str, Any]:
    from med42ray.config import TinyModelConfig

    small: dict[str, Any] = {
        "model.tiny.vocab_size": 2048,
        "model.tiny.hidden_size": 128,
        "model.tiny.intermediate_size": 256,
        "model.tiny.num_hidden_layers": 2,
        "model.tiny.num_attention_heads": 2,  # head dimension 64: vLLM's CPU minimum
        "model.tiny.num_key_value_heads": None,
        "model.tiny.max_position_embeddings": 1024,
        "model.tiny.seed": 0,
        "model.dtype": "float32",
        # the train section as the tests were written against (today's values, pinned)
        "train.strategy": "full",
        "train.deepspeed": {"enabled": True, "zero_stage": 2},
        "train.lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train.optimizer.lr": 1.0e-3,
        "train.schedule": {"name": "cosine", "warmup_ratio": 0.1},
        "train.epochs": 3,
        "train.micro_batch_size": 4,
        "train.gradient_accumulation_steps": 1,
        "train.max_seq_len": 256,
        "train.packing": True,
        "train.precision": "fp32",
        "train.checkpoint_every": 20,
        "train.keep_checkpoints": 2,
        "train.log_every": 1,
        "train.curve": {"eval_every_checkpoint": 0},  # tests that score curves say so
        # one protocol, the reference harness's prompts, whatever the demo config picks
        "eval.protocols": [{"scoring": "loglikelihood", "prompt_format": "multiple_choice"}],
    }
    if "pretrain" in TinyModelConfig.model_fields:
        small["model.tiny.pretrain"] = None  # random weights: no minutes-long base training
    return small


#: Dotted overrides every test config gets on top of `configs/tiny.yaml` (or a sweep file).
SMALL: dict[str, Any] = _small()


def small_config(path: str | Path = CONFIGS / "tiny.yaml", overrides: dict[str, Any] | None = None):
    """`path` (default `configs/tiny.yaml`) with `SMALL`, then `overrides`, applied."""
    from med42ray.config import load_config

    return load_config(path, {**SMALL, **(overrides or {})})


def small_set_args() -> list[str]:
    """`SMALL` as CLI `--set key=value` arguments (YAML values)."""
    import yaml

    args: list[str] = []
    for key, value in SMALL.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["--set", f"{key}={text}"]
    return args


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build artefacts (the tiny model) into a per-run cache, never the user's."""
    path = tmp_path_factory.mktemp("med42ray-cache")
    os.environ["MED42RAY_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_config():
    """`configs/tiny.yaml` with the pinned small test settings (`SMALL`)."""
    return small_config()


@pytest.fixture(scope="session")
def tiny_model_path(tiny_config) -> Path:
    """The pinned small tiny model (random weights), built once per run."""
    from med42ray.tiny import build_tiny_model

    return build_tiny_model(tiny_config.model.tiny)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole run (2 CPUs, like the CI machine)."""
    import ray

    from med42ray.cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------- object storage
#: The S3 endpoint the tests' object storage (moto's server, from `.venv-rehearsal`, the
#: rehearsal's) listens on. Set at import, before any Ray starts, so every Ray worker process
#: reaches it through the environment, as a cluster's nodes reach MinIO or S3.
S3_PORT = int(os.environ.get("MED42RAY_TEST_S3_PORT", 9100 + os.getpid() % 800))  # not 9010
os.environ.setdefault("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{S3_PORT}")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
MOTO = REPO / ".venv-rehearsal" / "bin" / "moto_server"


@pytest.fixture(scope="session")
def s3_server():
    """An S3 server on 127.0.0.1 for the whole run (moto's; `scripts/rehearsal/setup.sh`
    installs it), stopped by its process id. Yields the endpoint URL."""
    import subprocess
    import time
    import urllib.request

    if not MOTO.exists():
        subprocess.run(["bash", str(REPO / "scripts/rehearsal/setup.sh")], check=True)
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    proc = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", endpoint.rsplit(":", 1)[1]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError(f"moto_server did not start on {endpoint}")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket per test: `s3://<name>`."""
    import re
    import urllib.request
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/{name}", method="PUT"))
    return f"s3://{name}"
