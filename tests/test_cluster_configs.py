"""The shipped cluster configs validate: Ray's autoscaler schema and KubeRay's structure."""

import re
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

CLUSTER = REPO / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_autoscaler_config_passes_rays_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load("aws.yaml"))
    validate_config(config)
    types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    gpu_types = [t for t in types if t != "head"]
    assert gpu_types and all(types[t]["min_workers"] == 0 for t in gpu_types)
    assert all(types[t]["max_workers"] >= 2 for t in gpu_types)
    assert any("med42ray" in cmd for cmd in config["setup_commands"])


def test_autoscaler_validation_rejects_a_broken_config() -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = load("aws.yaml")
    broken["available_node_types"]["head"]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def worker_groups(spec: dict) -> list[dict]:
    return spec["workerGroupSpecs"]


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_kuberay_resources_are_well_formed(name: str) -> None:
    doc = load(name)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"]
    for group in worker_groups(spec):
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        env = {e["name"]: e for e in container.get("env", [])}
        assert "secretKeyRef" in env["HF_TOKEN"]["valueFrom"]  # token from a secret only


def test_rayjob_runs_shipped_configs_through_real_commands() -> None:
    from typer.main import get_command

    from med42ray.cli import app

    job = load("kuberay-rayjob.yaml")
    assert job["kind"] == "RayJob"
    cli = get_command(app)
    for step in job["spec"]["entrypoint"].split("&&"):
        words = step.split()
        assert words[0] == "med42ray"
        command = cli.commands[words[1]]  # KeyError: not a med42ray command
        if words[1] == "data":
            assert words[2] in command.commands
        config = next(w for w in words if w.endswith(".yaml"))
        assert (REPO / config).is_file()


def test_no_secret_is_written_in_cluster_files() -> None:
    for path in Path(CLUSTER).iterdir():
        assert not re.search(r"\bhf_[A-Za-z0-9]{30,}", path.read_text()), path
