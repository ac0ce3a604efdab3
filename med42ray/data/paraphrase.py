"""The paraphrase check: training records that reword a benchmark item.

n-gram decontamination catches copies, re-cased, re-punctuated, shuffled or embedded; a test
item rewritten in other words shares no 13-gram with it and passes (LMSYS's
llm-decontaminator showed rephrased MMLU and HumanEval items slipping through every n-gram
filter). This check ranks, for every benchmark item, the kept training records by a
similarity that survives rewording and lists the `top_k` nearest "to review" in
`paraphrase.csv` / `paraphrase.md`. It removes nothing unless `remove_above` is set; then the
records at least that similar to an item are marked `decontaminated` with reason `paraphrase`.

Similarities (`SIMILARITIES`, one small class each): `tfidf`, the cosine of word 1-2 gram
TF-IDF vectors (scikit-learn; needs no download, so it runs on the embedded default), and
`embedding`, the cosine of mean-pooled hidden states of a model named by hub id or folder. The
ranking is a sparse (or dense) matrix product in item chunks, top-k by `argpartition`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from med42ray.config import ExperimentConfig, ParaphraseConfig
from med42ray.data.decontam import joined_contents
from med42ray.data.steps import RemoveOrders, live

log = logging.getLogger(__name__)
PARAPHRASE_FILE = "paraphrase.csv"
_CHUNK = 64  # items per similarity block: 64 x records float32 stays small


# ---------------------------------------------------------------------------- similarities
class Similarity:
    """Vectors whose dot products are cosines (rows L2-normalised)."""

    name: ClassVar[str]

    def __init__(self, cfg: ParaphraseConfig, experiment: ExperimentConfig):
        self.cfg, self.experiment = cfg, experiment

    def vectors(self, items: list[str], records: list[str]) -> tuple[Any, Any]:
        raise NotImplementedError


class TfidfSimilarity(Similarity):
    """Word 1-2 gram TF-IDF (sublinear tf, English stop words), fitted on items and records."""

    name = "tfidf"

    def vectors(self, items, records):
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(
            ngram_range=(1, 2), sublinear_tf=True, stop_words="english", strip_accents="unicode"
        )
        matrix = vec.fit_transform(items + records).astype(np.float32)
        return matrix[: len(items)], matrix[len(items) :]


class EmbeddingSimilarity(Similarity):
    """Mean-pooled last hidden states of `model` (any `AutoModel`), L2-normalised."""

    name = "embedding"
    batch_size = 32

    def vectors(self, items, records):
        import torch
        from transformers import AutoModel

        from med42ray.models import load_tokenizer, resolve_model_path

        model_cfg = self.experiment.model.model_copy(update={"name_or_path": self.cfg.model})
        path = resolve_model_path(model_cfg, self.experiment.resources.hub_mirror)
        tokenizer = load_tokenizer(model_cfg, path)
        model = AutoModel.from_pretrained(path, use_safetensors=True).eval()

        @torch.no_grad()
        def embed(texts: list[str]) -> np.ndarray:
            out = []
            for start in range(0, len(texts), self.batch_size):
                enc = tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
            return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

        return embed(items), embed(records)


SIMILARITIES: dict[str, type[Similarity]] = {
    cls.name: cls for cls in (TfidfSimilarity, EmbeddingSimilarity)
}


def top_k(items: Any, records: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per item row, the indices and cosines of its `k` most similar record rows (best first)."""
    n_items, n_records = items.shape[0], records.shape[0]
    k = min(k, n_records)
    idx = np.zeros((n_items, k), np.int64)
    sim = np.zeros((n_items, k), np.float32)
    for start in range(0, n_items, _CHUNK):
        block = items[start : start + _CHUNK] @ records.T
        block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        best = np.argpartition(-block, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(block, best, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        idx[start : start + len(block)] = np.take_along_axis(best, order, axis=1)
        sim[start : start + len(block)] = np.take_along_axis(scores, order, axis=1)
    return idx, sim


# ------------------------------------------------------------------------------ the check
def item_table(benchmarks: list[tuple[str, str | None]], mirror: str | None) -> pd.DataFrame:
    """benchmark, item_id, text (the question and its options) of every indexed item."""
    from med42ray.benchmarks import load_benchmark

    rows = [
        {
            "benchmark": name,
            "item_id": item.id,
            "text": "\n".join([item.question, *item.choices]),
        }
        for name, path in benchmarks
        for item in load_benchmark(name, path, mirror=mirror)
    ]
    return pd.DataFrame(rows, columns=["benchmark", "item_id", "text"])


def record_table(ds) -> pd.DataFrame:
    """id, source, order, text of the records still live in the marked dataset `ds`."""

    def texts(batch: pa.Table) -> pa.Table:
        return pa.table(
            {
                "id": batch.column("id"),
                "source": batch.column("source"),
                "order": batch.column("order"),
                "text": joined_contents(batch.column("messages").combine_chunks()),
            }
        )

    return live(ds).map_batches(texts, batch_format="pyarrow").to_pandas()


class RemoveParaphrases(RemoveOrders):
    """The records at least `remove_above` similar to an item (decided in the driver)."""

    category = "decontaminated"
    reason = "paraphrase"

    def __init__(self, orders: dict[int, str]):
        self.orders = orders


class ParaphraseCheck:
    """Rank the live training records against every benchmark item; list, maybe remove."""

    def __init__(self, cfg: ExperimentConfig, benchmarks: list[tuple[str, str | None]]):
        self.cfg = cfg.data.decontamination.paraphrase
        self.similarity = SIMILARITIES[self.cfg.method](self.cfg, cfg)
        self.items = item_table(benchmarks, cfg.resources.hub_mirror)
        self.candidates = pd.DataFrame()

    def apply(self, ds):
        """`ds` with the candidates found (`self.candidates`) and, with `remove_above`, the
        records that close to an item marked removed."""
        records = record_table(ds)
        if records.empty or self.items.empty:
            return ds
        item_vecs, record_vecs = self.similarity.vectors(
            self.items["text"].tolist(), records["text"].tolist()
        )
        idx, sim = top_k(item_vecs, record_vecs, self.cfg.top_k)
        self.candidates = candidate_rows(self.items, records, idx, sim)
        if self.cfg.remove_above is None:
            return ds
        close = self.candidates[self.candidates["similarity"] >= self.cfg.remove_above]
        orders = {
            int(row.order): json.dumps(
                {"benchmark": row.benchmark, "item_id": row.item_id, "similarity": row.similarity}
            )
            for row in close.itertuples()
        }
        return RemoveParaphrases(orders).apply(ds) if orders else ds

    def report(self, folder: Path) -> dict[str, Any]:
        """`paraphrase.csv` and `paraphrase.md` in `folder`; the manifest's summary."""
        frame = self.candidates.drop(columns=["order"], errors="ignore")
        frame.to_csv(folder / PARAPHRASE_FILE, index=False)
        (folder / "paraphrase.md").write_text(review_markdown(frame, self.cfg), encoding="utf-8")
        removed = 0
        if self.cfg.remove_above is not None and len(frame):
            close = frame["similarity"] >= self.cfg.remove_above
            removed = int(frame.loc[close, "record_id"].nunique())
        return {
            "method": self.cfg.method,
            "top_k": self.cfg.top_k,
            "items": len(self.items),
            "remove_above": self.cfg.remove_above,
            "removed": removed,
            "max_similarity": float(frame["similarity"].max()) if len(frame) else None,
        }


def candidate_rows(
    items: pd.DataFrame, records: pd.DataFrame, idx: np.ndarray, sim: np.ndarray
) -> pd.DataFrame:
    """One row per (item, rank): the record, its similarity and both texts (shortened)."""
    n_items, k = idx.shape
    flat = idx.reshape(-1)
    frame = pd.DataFrame(
        {
            "benchmark": np.repeat(items["benchmark"].to_numpy(), k),
            "item_id": np.repeat(items["item_id"].to_numpy(), k),
            "rank": np.tile(np.arange(1, k + 1), n_items),
            "similarity": sim.reshape(-1).round(4),
            "record_id": records["id"].to_numpy()[flat],
            "source": records["source"].to_numpy()[flat],
            "order": records["order"].to_numpy()[flat],
            "item_text": np.repeat(items["text"].str.slice(0, 160).to_numpy(), k),
            "record_text": records["text"].str.slice(0, 160).to_numpy()[flat],
        }
    )
    return frame.sort_values(["similarity"], ascending=False, kind="stable").reset_index(drop=True)


def review_markdown(frame: pd.DataFrame, cfg: ParaphraseConfig, rows: int = 50) -> str:
    """The most similar (item, record) pairs first: what a person should read."""
    lines = [
        "# Paraphrase check: nearest training records per benchmark item (to review)",
        "",
        f"Similarity: {cfg.method}; top {cfg.top_k} per item; "
        + (f"removed at >= {cfg.remove_above}." if cfg.remove_above else "nothing removed."),
        "",
        "| similarity | benchmark | item | record | source | item text | record text |",
        "|---:|---|---|---|---|---|---|",
    ]
    for row in frame.head(rows).itertuples():
        item = str(row.item_text).replace("|", "/").replace("\n", " ")
        record = str(row.record_text).replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {row.similarity:.3f} | {row.benchmark} | {row.item_id} | {row.record_id} "
            f"| {row.source} | {item} | {record} |"
        )
    return "\n".join(lines) + "\n"
