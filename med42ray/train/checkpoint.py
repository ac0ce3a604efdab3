"""The checkpoint layout, owned here: what the workers write, what the driver and sweeps read.

A Ray Train checkpoint of this stage holds::

    trainer_state.json        step, totals, strategy, precision, data stats, `export` {kind: path}
    metrics.jsonl             one JSON line of metrics per optimiser step so far (rank 0's view)
    rng_rank00000.pt ...      each rank's RNG state (bit-for-bit resume)
    <engine state>            DeepSpeed's shards (`deepspeed/`) or `ddp_state.pt`
    export/model/ export/adapter/   the Hugging Face export, in the final checkpoint only

The driver copies a final checkpoint's export into the stage folder (`export_checkpoint`);
:meth:`Exported.weights_to_score` is the one answer to "which weights do we score".
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRAINER_STATE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "export"


def rng_file(rank: int) -> str:
    """Name of rank `rank`'s RNG state in a checkpoint."""
    return f"rng_rank{rank:05d}.pt"


@dataclass(frozen=True)
class Exported:
    """The Hugging Face folders a training exported: the causal LM and/or the LoRA adapter."""

    model: Path | None = None
    adapter: Path | None = None

    def weights_to_score(self) -> tuple[Path | None, Path | None]:
        """(model, adapter) an evaluation loads: a LoRA run is scored as its adapter served on
        the base model (as it would be deployed), even when a merged copy was exported too; a
        full run as its exported model."""
        if self.adapter is not None:
            return None, self.adapter
        return self.model, None


def read_state(folder: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint folder."""
    return json.loads((Path(folder) / TRAINER_STATE).read_text())


def is_final(checkpoint_path: str) -> bool:
    """Whether a local checkpoint holds an export (the last step's; an early stop has none)."""
    state_file = Path(checkpoint_path) / TRAINER_STATE
    return state_file.is_file() and bool(json.loads(state_file.read_text()).get("export"))


def export_checkpoint(checkpoint: Any, out: Path) -> tuple[Exported, dict[str, Any]]:
    """Copy a final checkpoint's export (`model/`, `adapter/`) and `metrics.jsonl` into `out`.

    `checkpoint` is a `ray.train.Checkpoint` or its path (local folder or URI). Returns what
    was exported (nothing for a checkpoint saved before the last step) and the checkpoint's
    trainer state.
    """
    import ray.train

    if not isinstance(checkpoint, ray.train.Checkpoint):
        checkpoint = ray.train.Checkpoint(str(checkpoint))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        state = read_state(folder)
        for kind, rel in state["export"].items():
            written[kind] = out / kind
            _replace_dir(folder / EXPORT_DIR / rel, written[kind])
        shutil.copyfile(folder / METRICS_FILE, out / METRICS_FILE)
    return Exported(written.get("model"), written.get("adapter")), state


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
