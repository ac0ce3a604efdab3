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


def _run_commands(text: str) -> list[str]:
    """Every `med42ray run ...` command in a file (joined across `\\` and `>-` line breaks)."""
    flat = re.sub(r"\\\n#?\s*", " ", text)
    flat = re.sub(r">-\n\s+", "", flat)
    flat = re.sub(r"\n\s+--set", " --set", flat)
    return re.findall(r"med42ray run [^\n]*", flat)


@pytest.mark.parametrize(
    "name",
    ["aws.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml", "../README.md"],
)
def test_cluster_runs_write_to_object_storage_or_a_declared_shared_volume(name: str) -> None:
    """The nodes share no filesystem: a run's `--out` is an object-store URI, or a volume the
    command declares shared (`resources.shared_filesystem`), never a bare local path."""
    text = (CLUSTER / name).read_text()
    if name.endswith("README.md"):
        text = text.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    commands = [c for c in _run_commands(text) if "--out" in c]
    assert commands, name
    for command in commands:
        out = re.search(r"--out (\S+)", command).group(1)
        if out.startswith(("outputs/", "$OUT", "OUT")):  # the README's one-machine examples
            continue
        assert out.startswith(("s3://", "gs://")) or "shared_filesystem=true" in command, command


def test_no_secret_in_the_runtime_env() -> None:
    env = load("runtime_env.yaml").get("env_vars", {})
    assert not [k for k in env if re.search(r"(^|_)(TOKEN|SECRET|PASSWORD|KEY)(_|$)", k)]
    assert "HF_TOKEN" not in (CLUSTER / "runtime_env.yaml").read_text().split("env_vars:")[1]
