"""Issue 17's acceptance test: `make rehearsal` (scripts/rehearsal/rehearse.sh) brings up a
cluster shaped like the real one on this machine (S3, a head and two worker nodes in private
namespaces), runs the paper recipe on it with a node killed during training and the job
stopped and resubmitted during evaluation, sweeps on an autoscaling cluster, tears it all down
and writes what it found to a JSON file, which this test reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "scripts" / "rehearsal" / "rehearse.sh"
#: The whole rehearsal, all parts included, is sized for ~12 minutes on 2 CPU cores.
TIMEOUT_S = int(os.environ.get("MED42RAY_REHEARSAL_TIMEOUT", 20 * 60))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="the rehearsal cluster needs root: each node runs in its own mount and PID "
    "namespace (unshare, mount)",
)


@pytest.mark.timeout(TIMEOUT_S + 60)  # the script's own limit governs, not the suite's 600 s
def test_rehearsal(tmp_path: Path) -> None:
    result_file = tmp_path / "rehearsal.json"
    env = {
        k: v
        for k, v in os.environ.items()
        # the suite's S3 endpoint, cache and local-Ray settings are not the cluster's
        if not k.startswith(("AWS_", "MED42RAY_", "RAY_", "HF_"))
    }
    env["BASE"] = str(tmp_path / "base")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--json", str(result_file)],
        cwd=REPO,
        env=env,
        stdout=sys.stdout,
        stderr=subprocess.STDOUT,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result_file.is_file(), f"rehearse.sh exited {proc.returncode} without its JSON"
    result = json.loads(result_file.read_text())
    failed = [f"{c['name']}: {str(c['detail'])[:400]}" for c in result["checks"] if not c["ok"]]
    assert not failed, "failed checks:\n" + "\n".join(failed)
    assert result["ok"] and proc.returncode == 0
    names = {c["name"] for c in result["checks"]}
    for expected in (
        "node b killed during train-full after a checkpoint",
        "train-full resumed from a checkpoint (resumed_from > 0)",
        "resubmit: data and train stages cached",
        "run.json lists every stage",
        "sweep: every trial TERMINATED",
        "autoscaler: worker nodes back to 0 when idle",
    ):
        assert expected in names, f"check {expected!r} did not run"
    times = result["times_s"]
    for part in ("setup", "up", "mirror", "run", "resubmit", "sweep", "down"):
        assert part in times, f"no time for {part}"
    assert result["transfers"]["full"] and result["transfers"]["lora"]
