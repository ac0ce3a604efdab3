"""Packing and collation: tokenised samples -> fixed-length rows -> flattened micro-batches.

Packed rows concatenate whole samples up to ``max_seq_len`` (best-fit decreasing, so rows are
nearly full), pad the rest, and restart ``position_ids`` at 0 for every sample. A micro-batch of
packed rows is then *flattened* (``collate``): the rows' real tokens, padding dropped, become one
row ``[1, T]`` with per-sample position ids, as ``transformers.DataCollatorWithFlattening`` lays
them out. One row is the only layout every attention kernel reads as isolated samples:

- sdpa / eager: with no attention mask, transformers derives a block-diagonal causal mask from
  the position ids (``masking_utils.find_packed_sequence_indices``);
- flash-attention 2/3: transformers treats position-id packing as variable-length only when the
  batch has ONE row (``modeling_flash_attention_utils._is_packed_sequence``); with several rows
  it would attend across samples, silently. We also pass ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` to the flash kernels (``FLASH_ATTENTION``), so they need not infer them;
- ``med42ray_varlen_sdpa`` (``med42ray.train.attention``, the training default with packing):
  sdpa run per sample at those ``cu_seq_lens``, so no device computes the T x T block mask.

``check_isolated`` refuses any other packed layout before a forward. The first token of every
sample has the label -100, so no token is trained to predict the next sample; padding is
never computed.

Unpacked rows (``packing: false``) hold one sample each and are padded per batch to the
longest row, with a 2D attention mask: the baseline that packing is measured against.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from med42ray.train.attention import VARLEN_SDPA
from med42ray.train.tokenize import IGNORE_INDEX, Sample


@dataclass
class Row:
    """One training row: ids, labels and (packed rows) per-sample position ids."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray | None = None
    num_samples: int = 1
    num_tokens: int = 0  # real (non-padding) tokens


@dataclass
class PackStats:
    """What packing did to one worker's samples (unpacked rows: `row_slots` = real tokens)."""

    samples: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0
    rows: int = 0
    real_tokens: int = 0
    row_slots: int = 0
    label_tokens: int = 0

    @property
    def padding_share(self) -> float:
        return 1.0 - self.real_tokens / self.row_slots if self.row_slots else 0.0


def best_fit_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: sample indices grouped into bins of at most `capacity` tokens.

    Deterministic (ties keep input order); O(n log n) with a sorted list of free capacities.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted
    for i in order:
        need = lengths[i]
        pos = bisect.bisect_left(free, (need, -1))
        if pos < len(free):
            room, b = free.pop(pos)
            bins[b].append(i)
            room -= need
        else:
            bins.append([i])
            b, room = len(bins) - 1, capacity - need
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def pack_samples(samples: list[Sample], max_seq_len: int, pad_id: int) -> list[Row]:
    """Pack samples (each at most `max_seq_len` long) into rows of exactly `max_seq_len`."""
    rows = []
    for members in best_fit_bins([len(s) for s in samples], max_seq_len):
        members.sort()  # samples keep their data order inside a row
        ids, labels, pos = [], [], []
        for i in members:
            s = samples[i]
            ids.extend(s.input_ids)
            labels.append(IGNORE_INDEX)  # never predict a sample's first token from the last one
            labels.extend(s.labels[1:])
            pos.extend(range(len(s)))
        real = len(ids)
        pad = max_seq_len - real
        ids.extend([pad_id] * pad)
        labels.extend([IGNORE_INDEX] * pad)
        pos.extend(range(pad))
        rows.append(
            Row(
                np.asarray(ids, dtype=np.int64),
                np.asarray(labels, dtype=np.int64),
                np.asarray(pos, dtype=np.int64),
                num_samples=len(members),
                num_tokens=real,
            )
        )
    return rows


def unpacked_rows(samples: list[Sample]) -> list[Row]:
    """One row per sample (padded later, per batch)."""
    return [
        Row(
            np.asarray(s.input_ids, dtype=np.int64),
            np.asarray(s.labels, dtype=np.int64),
            num_tokens=len(s),
        )
        for s in samples
    ]


def build_rows(
    samples: list[Sample], max_seq_len: int, pad_id: int, packing: bool
) -> tuple[list[Row], PackStats]:
    """Drop samples with no label tokens left, then pack (or not); count what happened."""
    stats = PackStats(samples=len(samples), truncated=sum(s.truncated for s in samples))
    kept = [s for s in samples if s.num_label_tokens > 0]
    stats.dropped_no_labels = len(samples) - len(kept)
    rows = pack_samples(kept, max_seq_len, pad_id) if packing else unpacked_rows(kept)
    stats.rows = len(rows)
    stats.real_tokens = sum(len(s) for s in kept)
    stats.label_tokens = sum(int((r.labels != IGNORE_INDEX).sum()) for r in rows)
    stats.row_slots = len(rows) * max_seq_len if packing else stats.real_tokens
    return rows, stats


#: attention implementations that read `cu_seq_lens_*` / `max_length_*` (varlen flash kernels)
FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")
#: ... and ours (`med42ray.train.attention`: sdpa per sample, on any device)
VARLEN_ATTENTION = (*FLASH_ATTENTION, VARLEN_SDPA)


def sample_lengths(position_ids: np.ndarray) -> np.ndarray:
    """Lengths of the samples in one flattened row: a sample starts where positions restart."""
    starts = np.flatnonzero(position_ids == 0)
    return np.diff(np.append(starts, len(position_ids)))


def collate(rows: list[Row], pad_id: int, attn_implementation: str | None = None) -> dict:
    """Tensors for one micro-batch, plus token counts.

    Packed rows: flattened into one row of their real tokens (module doc): `input_ids`,
    `labels`, `position_ids`, no attention mask, and for flash kernels `cu_seq_lens_q/k` and
    `max_length_q/k`. Unpacked rows: padded on the right to the longest row, with a 2D
    `attention_mask`. Counts: `num_tokens` (positions computed), `num_real_tokens`,
    `num_label_tokens` (tokens the loss sums over: labels after the causal shift),
    `num_samples`, and `attention_pairs` (sum of squared sample lengths, for FLOPs).
    """
    import torch

    if rows[0].position_ids is not None:
        batch = _flattened(rows)
        lengths = sample_lengths(batch["position_ids"][0].numpy())
        if attn_implementation in VARLEN_ATTENTION:
            cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu)
            batch.update(max_length_q=int(lengths.max()), max_length_k=int(lengths.max()))
    else:
        batch = _padded(rows, pad_id)
        lengths = np.array([r.num_tokens for r in rows])
    counts = {
        "num_tokens": int(batch["input_ids"].numel()),
        "num_real_tokens": sum(r.num_tokens for r in rows),
        "num_label_tokens": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
        "num_samples": sum(r.num_samples for r in rows),
        "attention_pairs": int((lengths.astype(np.int64) ** 2).sum()),
    }
    return {"inputs": batch, **counts}


def _flattened(rows: list[Row]) -> dict:
    """Packed rows as one row of their real tokens (padding tails dropped)."""
    import torch

    def joined(field: str) -> torch.Tensor:
        parts = [getattr(r, field)[: r.num_tokens] for r in rows]
        return torch.from_numpy(np.concatenate(parts)[None, :])

    return {name: joined(name) for name in ("input_ids", "labels", "position_ids")}


def _padded(rows: list[Row], pad_id: int) -> dict:
    """Unpacked rows padded on the right to the longest, with a 2D attention mask."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n], labels[i, :n], mask[i, :n] = r.input_ids, r.labels, 1
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
    }


def check_isolated(inputs: dict, attn_implementation: str | None) -> None:
    """Refuse a batch layout in which an attention kernel could attend across samples.

    Packed inputs (position ids, no attention mask) must be one flattened row: several rows
    are read as isolated samples by the sdpa/eager mask builder but NOT by flash-attention,
    which then attends across the samples of each row without an error. Flash kernels also
    need position ids that restart at 0 per sample (or explicit `cu_seq_lens`) in that row.
    """
    if "attention_mask" in inputs or "position_ids" not in inputs:
        return
    rows = inputs["input_ids"].shape[0]
    if rows != 1:
        raise ValueError(
            f"packed batch of {rows} rows without an attention mask: flash-attention would "
            "attend across samples; flatten it into one row (med42ray.train.packing.collate)"
        )
    flash = attn_implementation in FLASH_ATTENTION and "cu_seq_lens_q" not in inputs
    if flash and int(inputs["position_ids"][0, 0]) != 0:
        raise ValueError("flattened packed row must start at position 0 (one per sample)")
