"""The paraphrase check: a benchmark item reworded in the training data has no n-gram in
common with it, passes decontamination, and is listed first among the item's candidates."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from med42ray.data.paraphrase import top_k

from .conftest import small_config

ITEM = "A patient is diagnosed with anaphylaxis. Which therapy is the most appropriate"
PARAPHRASE = {  # the stem reworded and reordered, the options kept (LMSYS's rephrased items)
    "instruction": "Anaphylaxis is diagnosed in a patient: which initial therapy is most "
    "appropriate? Options: imatinib; intramuscular epinephrine; pyridostigmine; topical "
    "timolol and acetazolamide.",
    "input": "",
    "output": "intramuscular epinephrine",
}


@pytest.fixture(scope="module")
def checked(ray_session, tmp_path_factory):
    from med42ray.data import prepare_data

    tmp = tmp_path_factory.mktemp("paraphrase")
    planted = tmp / "planted.jsonl"
    planted.write_text(json.dumps(PARAPHRASE) + "\n")
    base = small_config()
    sources = [s.model_dump(mode="json") for s in base.data.sources]
    sources.append({"name": "planted", "path": str(planted), "format": "alpaca"})
    cfg = small_config(
        overrides={
            "data.sources": sources,
            "data.decontamination.paraphrase": {"enabled": True, "top_k": 3},
        }
    )
    manifest = prepare_data(cfg, tmp / "data", verbose=False)
    return manifest, tmp / "data"


def test_a_planted_paraphrase_is_the_top_candidate_of_its_item(checked):
    manifest, out = checked
    assert manifest["sources"]["planted"]["decontaminated"] == 0  # no n-gram shared
    candidates = pd.read_csv(out / "paraphrase.csv")
    item = candidates[candidates["item_text"].str.startswith(ITEM[:60])]
    assert item["benchmark"].iloc[0] == "medqa"
    ranked = item.sort_values("rank")
    assert ranked["source"].iloc[0] == "planted"
    # the tiny corpus's own MedQA-style training questions on the same fact, with the same
    # options ("How is anaphylaxis treated initially?"), follow: real paraphrases to review
    assert set(ranked["source"].iloc[1:]) == {"medqa_train"}
    summary = manifest["decontamination"]["paraphrase"]
    assert summary["method"] == "tfidf" and summary["removed"] == 0
    assert "to review" in (out / "paraphrase.md").read_text()


def test_top_k_orders_by_cosine():
    items = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    records = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], np.float32)
    idx, sim = top_k(items, records, 2)
    assert idx.tolist() == [[1, 0], [2, 0]]
    assert sim[:, 0].tolist() == [1.0, 1.0]
