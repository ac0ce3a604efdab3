"""The stage's inputs, checked before any corpus is read: fail fast, in one line.

:func:`open_inputs` resolves every source and opens each of its local files, and loads,
validates and indexes every benchmark that decontamination needs: a bad path, an unreadable
file, an empty source or a broken benchmark fails here, before minutes or hours of reading,
without Ray and without reading a corpus. `prepare_data` starts with it (and uses its index);
:func:`check_inputs` runs the same check and returns a small summary (`config validate
--deep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from med42ray.config import DataConfig, ExperimentConfig
from med42ray.data.decontam import DecontamIndex, decontam_index
from med42ray.data.filters import check_languages
from med42ray.data.lost import LostFile, check_lost_files, lost_by_source
from med42ray.data.sources import DataError, SourceFiles, resolve_sources


@dataclass(frozen=True)
class Inputs:
    """The stage's checked inputs: the resolved sources, the files among them that could not
    be opened (their sources allow it), the benchmarks to index and their index."""

    sources: list[SourceFiles]
    unopened: list[LostFile]
    benchmarks: list[tuple[str, str | None]]
    index: DecontamIndex | None

    def summary(self) -> dict[str, Any]:
        """{"sources": {name: {files, bytes, lost_files?}}, "benchmarks": {name: {path, items}}}
        (`bytes` is None when a size is unknown, e.g. for a hub source)."""
        lost = lost_by_source(self.unopened)
        sources = {}
        for src in self.sources:
            sizes = src.sizes or (None,)
            entry = {
                "files": len(src.paths),
                "bytes": None if None in sizes else sum(sizes),
            }
            if src.name in lost:
                entry["lost_files"] = [f.to_manifest() for f in lost[src.name]]
            sources[src.name] = entry
        benchmarks = {
            name: {"path": path or "hub", "items": self.index.per_task.get(name, 0)}
            for name, path in self.benchmarks
        }
        return {"sources": sources, "benchmarks": benchmarks}


def check_settings(dcfg: DataConfig) -> None:
    """The data settings that only make sense with the sources: some sources, supported
    languages, `allow_lost_files` naming sources."""
    if not dcfg.sources:
        raise DataError("data.sources: no sources configured")
    check_languages(dcfg.filters)
    names = [s.name for s in dcfg.sources]
    unknown = [n for n in dcfg.allow_lost_files if n not in names]
    if unknown:
        raise DataError(f"data.allow_lost_files: no source named {unknown} (sources: {names})")


def unopenable_files(src: SourceFiles) -> list[LostFile]:
    """The local files of `src` that cannot be opened for reading (object-store files were
    listed with their sizes; hub sources have no file)."""
    if src.hub or src.filesystem is not None:
        return []
    lost = []
    for i, path in enumerate(src.paths):
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            reason = f"cannot open: {type(err).__name__}: {err.strerror or err}"
            lost.append(LostFile(src.name, src.labels[i], path, src.size(i), None, reason))
    return lost


def check_mirrored(src: SourceFiles) -> None:
    """A hub source read from a local mirror needs its folder there (the hub's own layout)."""
    location = src.paths[0]
    mirrored = src.hub and location != src.labels[0] and "://" not in location
    if mirrored and not Path(location).is_dir():
        raise DataError(
            f"source {src.name!r}: hf://{src.labels[0]}: not in the hub mirror "
            f"(no folder {location})"
        )


def check_not_empty(src: SourceFiles, unopened: list[LostFile]) -> None:
    """Fail when `src` has no file that can be opened, or every one is empty (0 bytes)."""
    gone = [f for f in unopened if f.source == src.name]
    gone_paths = {f.path for f in gone}
    left = [(p, src.size(i)) for i, p in enumerate(src.paths) if p not in gone_paths]
    if src.hub or any(size != 0 for _, size in left):
        return
    if not left:
        raise DataError(f"source {src.name!r}: no file can be opened: {gone[0].describe()}")
    named = ", ".join(f"{p} (0 bytes)" for p, _ in left[:3])
    more = f" and {len(left) - 3} more" if len(left) > 3 else ""
    also = f"; {len(gone)} lost: {gone[0].describe()}" if gone else ""
    raise DataError(f"source {src.name!r}: no records in {named}{more}{also}")


def open_inputs(cfg: ExperimentConfig) -> Inputs:
    """Resolve and open every source, load and index every benchmark: the stage's inputs, or
    a one-line `DataError` naming the source or benchmark and file. Reads no corpus."""
    dcfg = cfg.data
    check_settings(dcfg)
    srcs = resolve_sources(dcfg.sources, cfg.resources.hub_mirror)
    unopened = [f for src in srcs for f in unopenable_files(src)]
    check_lost_files(dcfg.allow_lost_files, unopened, quiet=True)  # logged once read
    for src in srcs:
        check_mirrored(src)
        check_not_empty(src, unopened)
    benchmarks, index = decontam_index(cfg)
    return Inputs(srcs, unopened, benchmarks, index)


def check_inputs(cfg: ExperimentConfig) -> dict[str, Any]:
    """Check every input of the data stage (`open_inputs`), without Ray and without reading a
    corpus; its summary: per source, files and bytes; per benchmark, path and items."""
    return open_inputs(cfg).summary()
