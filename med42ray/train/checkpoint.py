"""The checkpoint layout, owned here: what the workers write, what the driver and sweeps read.

A Ray Train checkpoint of this stage holds::

    trainer_state.json        step, totals, strategy, precision, data stats, resume transfers,
                              `export` {kind: location} (the final checkpoint only),
                              `curve_export` {kind: folder under curve_export/} (see below)
    metrics.jsonl             one JSON line of metrics per optimiser step so far (rank 0's view)
    rng_rank00000.pt ...      each rank's RNG state (bit-for-bit resume)
    <engine state>            DeepSpeed's shards (`deepspeed/`, `latest`) or `ddp_state.pt`

The export is not in the checkpoint: rank 0 uploads the Hugging Face folders (with
`checksums.json`) to `<export_to>/model`, `<export_to>/adapter` (`publish`) and the final
checkpoint records where. A checkpoint scored for the benchmark curve (`train.curve`,
`med42ray.train.curve`) before the last step holds its own Hugging Face folders under
`curve_export/`, for the scoring task to load (`curve_weights`). Nobody downloads a whole
checkpoint: the driver reads its two small files (`read_state`, `read_metrics`), a resuming
worker only its own rank's files (`rank_files`). :meth:`Exported.weights_to_score` is the one
answer to "which weights do we score".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from med42ray import storage

TRAINER_STATE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "export"  # where checkpoints written before exports moved out held them
CURVE_EXPORT_DIR = "curve_export"  # a curve point's weights, inside its checkpoint

Location = str | Path


def rng_file(rank: int) -> str:
    """Name of rank `rank`'s RNG state in a checkpoint."""
    return f"rng_rank{rank:05d}.pt"


def as_location(location: Location) -> Location:
    """A local location as a `Path`, an object-store one as its URI string."""
    return str(location) if storage.is_uri(location) else Path(location)


@dataclass(frozen=True)
class Exported:
    """The Hugging Face folders a training exported: the causal LM and/or the LoRA adapter
    (local paths, or URIs on object storage)."""

    model: Location | None = None
    adapter: Location | None = None

    def weights_to_score(self) -> tuple[Location | None, Location | None]:
        """(model, adapter) an evaluation loads: a LoRA run is scored as its adapter served on
        the base model (as it would be deployed), even when a merged copy was exported too; a
        full run as its exported model."""
        if self.adapter is not None:
            return None, self.adapter
        return self.model, None


def filesystem_location(filesystem: Any, path: str) -> str:
    """A location (`storage`'s: path or URI) for `path` on a pyarrow `filesystem`."""
    kind = getattr(filesystem, "type_name", "local")
    if kind == "local":
        return path
    if kind not in ("s3", "gcs"):
        raise ValueError(f"checkpoint on an unsupported filesystem ({kind}): {path}")
    return f"{'gs' if kind == 'gcs' else kind}://{path.lstrip('/')}"


def checkpoint_location(checkpoint: Any) -> str:
    """Where a `ray.train.Checkpoint` (or a location given as such) lives, as a location."""
    if isinstance(checkpoint, (str, Path)):
        return str(checkpoint)
    return filesystem_location(checkpoint.filesystem, checkpoint.path)


def read_state(checkpoint: Any) -> dict[str, Any]:
    """The trainer state of a checkpoint (a `Checkpoint`, a folder or a URI); one small read."""
    location = storage.join(checkpoint_location(checkpoint), TRAINER_STATE)
    return json.loads(storage.read_text(location))


def read_metrics(checkpoint: Any) -> str:
    """The `metrics.jsonl` text of a checkpoint; one small read."""
    return storage.read_text(storage.join(checkpoint_location(checkpoint), METRICS_FILE))


def is_final(checkpoint: Any) -> bool:
    """Whether a checkpoint recorded an export (the last step's; an early stop has none)."""
    location = checkpoint_location(checkpoint)
    if not storage.is_file(storage.join(location, TRAINER_STATE)):
        return False
    return bool(read_state(location).get("export"))


def exported_locations(checkpoint: Any, state: dict[str, Any]) -> dict[str, Location]:
    """{kind: location} of what `state` (read from `checkpoint`) says was exported. Entries
    of older checkpoints, relative to the checkpoint's `export/`, are resolved there."""
    found: dict[str, Location] = {}
    for kind, where in (state.get("export") or {}).items():
        if not storage.is_uri(where) and not Path(where).is_absolute():
            where = storage.join(checkpoint_location(checkpoint), EXPORT_DIR, where)
        found[kind] = as_location(where)
    return found


def curve_weights(checkpoint: Any) -> Exported:
    """The weights to score for a curve point of `checkpoint`: the final export, or the
    Hugging Face folders an earlier checkpoint holds under `curve_export/`."""
    state = read_state(checkpoint)
    found = exported_locations(checkpoint, state)
    where = checkpoint_location(checkpoint)
    for kind, rel in (state.get("curve_export") or {}).items():
        found.setdefault(kind, as_location(storage.join(where, CURVE_EXPORT_DIR, rel)))
    return Exported(found.get("model"), found.get("adapter"))


def publish(folder: Path, location: Location) -> int:
    """Write `checksums.json` into a local export folder, then replace `location` with it
    (upload, or copy to a local path); return the bytes sent."""
    from med42ray.models import write_checksums

    write_checksums(folder)
    if not storage.is_uri(location) and Path(location).resolve() == Path(folder).resolve():
        return 0
    storage.remove(location)
    return storage.upload(folder, location)


def export_checkpoint(checkpoint: Any, out: Path | None = None) -> tuple[Exported, dict[str, Any]]:
    """What a final checkpoint exported, and its trainer state, without downloading it.

    `checkpoint` is a `ray.train.Checkpoint` or its location. With `out`, the exported folders
    are also copied into `out/<kind>` (from wherever they were published; skipped where they
    already are there) with the checkpoint's `metrics.jsonl`. A checkpoint saved before the
    last step exported nothing.
    """
    state = read_state(checkpoint)
    found = exported_locations(checkpoint, state)
    if out is None:
        return Exported(found.get("model"), found.get("adapter")), state
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for kind, where in found.items():
        written[kind] = out / kind
        if storage.is_uri(where) or Path(where).resolve() != written[kind].resolve():
            storage.remove(written[kind])
            storage.download(where, written[kind])
    (out / METRICS_FILE).write_text(read_metrics(checkpoint), encoding="utf-8")
    return Exported(written.get("model"), written.get("adapter")), state
