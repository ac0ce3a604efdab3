"""Packing and collation: tokenised samples -> fixed-length rows -> tensors.

Packed rows concatenate whole samples up to ``max_seq_len`` (best-fit decreasing, so rows are
nearly full), pad the rest, and restart ``position_ids`` at 0 for every sample (and for the pad
tail). No attention mask is passed with packed rows: Hugging Face models then derive a
block-diagonal causal mask from the position ids (``transformers.masking_utils.
find_packed_sequence_indices``, used by the sdpa/eager masks on CPU and by flash-attention's
varlen path on GPU), so no token attends across a sample boundary. The first token of every
sample has the label -100, so no token is trained to predict the next sample.

Unpacked rows (``packing: false``) hold one sample each and are padded per batch to the
longest row, with a 2D attention mask: the baseline that packing is measured against.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

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


def collate(rows: list[Row], pad_id: int) -> dict:
    """Tensors for one micro-batch, plus token counts (`num_tokens`, `num_real_tokens`).

    Packed rows: `input_ids`, `labels`, `position_ids` and no attention mask (see module doc).
    Unpacked rows: padded on the right to the longest row, with a 2D `attention_mask`.
    """
    import torch

    if rows[0].position_ids is not None:
        batch = {
            "input_ids": torch.from_numpy(np.stack([r.input_ids for r in rows])),
            "labels": torch.from_numpy(np.stack([r.labels for r in rows])),
            "position_ids": torch.from_numpy(np.stack([r.position_ids for r in rows])),
        }
    else:
        width = max(len(r.input_ids) for r in rows)
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            n = len(r.input_ids)
            ids[i, :n], labels[i, :n], mask[i, :n] = r.input_ids, r.labels, 1
        batch = {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(mask),
        }
    counts = {
        "num_tokens": int(batch["input_ids"].numel()),
        "num_real_tokens": sum(r.num_tokens for r in rows),
        "num_label_tokens": int((batch["labels"] != IGNORE_INDEX).sum()),
        "num_samples": sum(r.num_samples for r in rows),
    }
    return {"inputs": batch, **counts}
