"""Log-likelihood scoring against a hand computation, answer parsing, and the metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from med42ray.benchmarks import load_benchmark, load_task
from med42ray.eval.metrics import mean_stderr, predict, summarise
from med42ray.eval.parsing import parse_answer
from med42ray.eval.prompts import PromptFormat

FIX = Path(__file__).parent / "fixtures" / "benchmarks"
ABCD = ["A", "B", "C", "D"]
DRUGS = ["Ampicillin", "Ceftriaxone", "Doxycycline", "Nitrofurantoin"]


@pytest.fixture(scope="module")
def hf_engine(tiny_config, tiny_model_path):
    from med42ray.eval.engines import HFEngine

    cfg = tiny_config.eval.model_copy(update={"batch_size": 3})
    return HFEngine(str(tiny_model_path), tiny_config.model, cfg)


def hand_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Plain forward over context + continuation, log_softmax, sum the continuation's."""
    import torch

    ctx = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    cont = whole[len(ctx) :]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    return sum(float(logprobs[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_loglikelihood_matches_hand_computation(hf_engine, tiny_config, tiny_model_path):
    from med42ray.models import load_model

    model = load_model(tiny_config.model, str(tiny_model_path)).eval()
    requests = []
    for task, file in [("medqa", "medqa.jsonl"), ("headqa", "headqa.jsonl"),
                       ("pubmedqa", "pubmedqa_bigbio.jsonl")]:  # fmt: skip
        fmt = PromptFormat(load_task(task))
        for item in load_benchmark(task, str(FIX / file))[:2]:
            prompt = fmt.render(item)
            requests += [(prompt.context, c) for c in prompt.continuations]
    requests.append(("Answer: ", "Nitrofurantoin"))  # trailing space moves to the continuation
    got = hf_engine.loglikelihood(requests)
    tok = hf_engine.tokenizer
    for (context, cont), score in zip(requests, got, strict=True):
        if context.endswith(" "):
            context, cont = context.rstrip(), " " + cont
        assert score == pytest.approx(hand_loglikelihood(model, tok, context, cont), abs=1e-4)
    assert len(set(got)) > len(got) // 2  # real, distinct scores
    # multi-token HeadQA options: one batch or many, the same numbers
    one_by_one = [hf_engine.loglikelihood([r])[0] for r in requests[8:12]]
    assert one_by_one == pytest.approx(got[8:12], abs=1e-5)


def test_encode_pair_like_lm_eval(hf_engine):
    from med42ray.eval.engines import encode_pairs

    tok = hf_engine.tokenizer
    ((ctx, cont),) = encode_pairs(tok, [("Question: x\nAnswer:", " A")])
    assert ctx[0] == tok.bos_token_id and ctx == tok("Question: x\nAnswer:")["input_ids"]
    assert ctx + cont == tok("Question: x\nAnswer: A")["input_ids"]
    ((ctx2, cont2),) = encode_pairs(tok, [("Question: x\nAnswer: ", "A")])
    assert (ctx2, cont2) == (ctx, cont)


def test_hf_generate_is_greedy_and_batched(hf_engine):
    prompts = ["Question: Which drug?\nAnswer:", "Hi", "Abstract: x\nQuestion: y?\nAnswer:"]
    batched = hf_engine.generate(prompts, 6)
    assert batched == [hf_engine.generate([p], 6)[0] for p in prompts]
    assert all(isinstance(t, str) and t for t in batched)


# ------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("C", 2), (" C.", 2), ("(C) Doxycycline", 2), ("c) doxycycline is best", 2),
        ("The answer is (D)", 3), ("Answer: B because ceftriaxone covers it", 1),
        ("The correct answer is: a", 0), ("**B**", 1), ("A. Ampicillin", 0),
        ("I would give nitrofurantoin.", 3), ("A patient like this needs nitrofurantoin", 3),
        ("A pregnant woman should get", None), ("", None), ("Not sure, maybe B or C", None),
        ("so the best option is (B).", 1), ("Final answer: d", 3),
    ],
)  # fmt: skip
def test_parse_letter_answers(text, expected):
    assert parse_answer(text, ABCD, DRUGS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("yes", 0), (" No.", 1), ("Maybe, the evidence is weak", 2), ("Answer: no", 1),
     ("The answer is yes because", 0), ("unclear", None)],
)  # fmt: skip
def test_parse_pubmedqa_answers(text, expected):
    labels = ["yes", "no", "maybe"]
    assert parse_answer(text, labels, labels) == expected


# ------------------------------------------------------------------------------ metrics
def test_acc_norm_divides_by_characters():
    import numpy as np

    lls, choices = [-4.0, -9.0, -6.0], ["no", "perhaps so", "maybe."]
    acc, norm = predict(lls, choices)
    assert acc == 0
    assert norm == int(np.argmax(np.array(lls) / np.array([2.0, 10.0, 6.0]))) == 1


def test_mean_stderr_is_lm_eval_formula():
    values = [1.0] * 30 + [0.0] * 70
    p, n = 0.3, 100
    assert mean_stderr(values) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    from lm_eval.api.metrics import mean_stderr as lm_eval_stderr

    assert mean_stderr(values) == pytest.approx(lm_eval_stderr(values))
    assert math.isnan(mean_stderr([1.0]))


def test_summary_tasks_subsets_and_groups():
    def items(task, correct, subsets=None):
        return [
            {"benchmark": task, "subset": (subsets or [None] * len(correct))[i],
             "prompt_format": f"{task}:0shot", "prompt_version": "v", "correct": c,
             "correct_norm": c, "parsed": None, "compute_s": 0.5}
            for i, c in enumerate(correct)
        ]  # fmt: skip

    frame = pd.DataFrame(
        items("mmlu_anatomy", [1, 0, 0, 0])
        + items("mmlu_college_biology", [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
        + items("usmle_sample_exam", [1, 1, 0], ["1", "1", "2"])
        + items("usmle_self_assessment", [1, 0])
    )
    summary = summarise(frame, {"model": "m", "engine": "hf", "scoring": "ll", "wall_s": 1.0})
    row = summary.set_index(["level", "benchmark", "subset"])
    assert row.loc[("task", "mmlu_anatomy", ""), "acc"] == 0.25
    assert row.loc[("group", "mmlu_clinical", "mmlu_anatomy,mmlu_college_biology"), "acc"] == (
        pytest.approx((0.25 + 0.2) / 2)
    )  # unweighted mean of the subjects, not the pooled 3/14
    usmle = row.loc[("group", "usmle", "usmle_sample_exam,usmle_self_assessment")]
    assert usmle["acc"] == pytest.approx((2 / 3 + 1 / 2) / 2) and usmle["n"] == 5
    se = [mean_stderr([1, 1, 0]), mean_stderr([1, 0])]
    assert usmle["acc_stderr"] == pytest.approx(math.sqrt(se[0] ** 2 + se[1] ** 2) / 2)
    assert row.loc[("subset", "usmle_sample_exam", "1"), "acc"] == 1.0
    assert row.loc[("task", "usmle_sample_exam", ""), "compute_s"] == 1.5


def test_size_weighted_group_is_lm_evals_weight_by_size():
    """MMLU clinical both ways: the paper's unweighted mean and lm-eval's size-weighted one
    (`multimedqa`: `weight_by_size`, `pooled_sample_stderr`), on the same members."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    from med42ray.eval.metrics import size_weighted_mean

    correct = {"mmlu_anatomy": [1, 0, 0, 0], "mmlu_college_biology": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]}
    frame = pd.DataFrame(
        [
            {"benchmark": task, "subset": None, "prompt_format": f"{task}:0shot",
             "prompt_version": "v", "correct": c, "correct_norm": c, "parsed": None,
             "compute_s": 0.1}
            for task, values in correct.items()
            for c in values
        ]
    )  # fmt: skip
    summary = summarise(frame, {"model": "m", "engine": "hf", "wall_s": 1.0})
    row = summary[summary["level"] == "group"].set_index("benchmark")
    accs = [0.25, 0.2]
    stderrs = [mean_stderr(v) for v in correct.values()]
    sizes = [4, 10]
    assert row.loc["mmlu_clinical", "acc"] == pytest.approx(sum(accs) / 2)
    weighted = row.loc["mmlu_clinical_weighted"]
    assert weighted["acc"] == pytest.approx(aggregate_subtask_metrics(accs, sizes, True))
    assert weighted["acc"] == pytest.approx(3 / 14)  # every item counts once
    assert weighted["acc_stderr"] == pytest.approx(pooled_sample_stderr(stderrs, sizes))
    assert weighted["n"] == 14 and weighted["subset"] == "mmlu_anatomy,mmlu_college_biology"
    acc, se = size_weighted_mean(accs, stderrs, [4, 0])  # a member without items weighs nothing
    assert (acc, se) == (pytest.approx(0.25), pytest.approx(pooled_sample_stderr(stderrs[:1], [4])))


def test_agreement_counts_same_options_and_never_unparsed():
    from med42ray.eval.metrics import ALL_ITEMS, agreement

    def preds(protocol, values):
        return [
            {"protocol": protocol, "benchmark": bench, "item_id": str(i), "pred": p}
            for i, (bench, p) in enumerate(values)
        ]

    frame = pd.DataFrame(
        preds("letter", [("medqa", 0), ("medqa", 1), ("medqa", 2), ("headqa", -1)])
        + preds("generate", [("medqa", 0), ("medqa", 3), ("medqa", 2), ("headqa", -1)])
    )
    table = agreement(frame).set_index("benchmark")
    assert table.loc["medqa", "agree"] == pytest.approx(2 / 3) and table.loc["medqa", "n"] == 3
    assert table.loc["headqa", "agree"] == 0.0  # two unparsed answers name no option
    assert table.loc[ALL_ITEMS, "agree"] == pytest.approx(2 / 4)
    assert set(table["protocol_a"]) == {"letter"} and set(table["protocol_b"]) == {"generate"}
    assert agreement(frame[frame["protocol"] == "letter"]).empty  # one protocol: nothing to compare
