"""What a sweep trial reports: one protocol's accuracies, never an average over protocols."""

from __future__ import annotations

import pandas as pd

from med42ray.config import ExperimentConfig
from med42ray.tune.sweep import trial_scores
from tests.conftest import small_config


def test_trial_scores_use_the_first_protocol_only():
    protocols = [{"prompt_format": "cloze"}, {}]  # cloze first: not the default protocol
    cfg: ExperimentConfig = small_config(overrides={"eval.protocols": protocols})
    first, second = [p.label for p in cfg.eval.resolved_protocols()]
    assert (first, second) == ("cloze", "letter")
    rows = [
        ("task", first, "medqa", 0.5), ("task", first, "pubmedqa", 0.7),
        ("task", second, "medqa", 0.1), ("task", second, "pubmedqa", 0.1),
        ("group", first, "mmlu_clinical", 0.9),
    ]  # fmt: skip
    summary = pd.DataFrame(rows, columns=["level", "protocol", "benchmark", "acc"])
    scores = trial_scores(cfg, summary)
    assert scores == {"medqa_acc": 0.5, "pubmedqa_acc": 0.7, "accuracy": 0.6}
