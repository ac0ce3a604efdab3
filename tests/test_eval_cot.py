"""Zero-shot chain of thought: the `cot` prompt format, its protocol configuration, and the
parser reading the answer line out of realistic reasoning."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import ValidationError

from med42ray.benchmarks import list_tasks, load_benchmark, load_task
from med42ray.config import EvalConfig, ProtocolConfig
from med42ray.eval.parsing import parse_answer
from med42ray.eval.prompts import PromptFormat, format_task
from med42ray.eval.scoring import GenerateScoring
from tests.conftest import REPO

ABCD = ["A", "B", "C", "D"]
DRUGS = ["Ampicillin", "Ceftriaxone", "Doxycycline", "Nitrofurantoin"]
YNM = ["yes", "no", "maybe"]
TINY = REPO / "data" / "tiny" / "benchmarks"


# ------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the answer line lm-eval's prompt asks for, after reasoning that names other options
        ("The patient is pregnant with cystitis. Doxycycline (C) is contraindicated in "
         "pregnancy and option A has high resistance. Therefore, the answer is (D).", 3),
        # last match wins: the model corrects itself
        ("The answer is (C). Wait, doxycycline is teratogenic, so the answer is (B).", 1),
        # markdown answer lines
        ("Let's analyze each option:\nA. Ampicillin: resistance.\nB. Ceftriaxone: overkill.\n"
         "\n**Answer:** D", 3),
        ("Cystitis in pregnancy is treated orally. So the final answer is **C. Doxycycline**.", 2),
        ("Step 1: pregnancy. Step 2: no tetracyclines.\n\n$\\boxed{B}$", 1),
        # the option's text after the cue, and the article that is not option A
        ("First-line for uncomplicated cystitis: the answer is nitrofurantoin.", 3),
        ("The answer is a beta-lactam that is safe in pregnancy, so (A) Ampicillin.", 0),
        # "A 23-year-old" opens the reasoning: not the label A
        ("A 23-year-old woman at 10 weeks has dysuria. Nitrofurantoin is safe here. "
         "The correct option is D.", 3),
        # the model invents the next question: cut at "Question:" (lm-eval's `until`)
        ("Safe in pregnancy: the answer is (D).\nQuestion: A 45-year-old man has chest pain.\n"
         "Options:\nA. Aspirin\nAnswer: Let's think step by step. The answer is (A).", 3),
        # the prompt's own cue echoed, then the answer
        ("Answer: Let's think step by step. Ceftriaxone covers it. The answer is (B)", 1),
        # cut off by max_new_tokens before any answer: unparsed (counted wrong)
        ("Let's think step by step. The patient is pregnant and has a urinary tract infection, "
         "so we need an antibiotic that is safe in", None),
        ("Options B and C both seem reasonable here", None),
    ],
)  # fmt: skip
def test_parse_chain_of_thought_letter_answers(text, expected):
    assert parse_answer(text, ABCD, DRUGS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The abstract reports that thiamine deficiency causes beriberi and there is no "
         "evidence against it. The answer is (yes).", 0),
        ("The trial found no significant difference between the arms, so the answer is no.", 1),
        ("Results are mixed and no firm conclusion is drawn.\nAnswer: maybe", 2),
        ("No, the study does not say. Yes, it might. The answer is (maybe).", 2),
        ("No study showed an effect; yes, some suggested one", None),
    ],
)  # fmt: skip
def test_parse_chain_of_thought_pubmedqa_answers(text, expected):
    assert parse_answer(text, YNM, YNM) == expected


def test_generate_scoring_keeps_the_answer_before_the_stop_and_flags_unparsed():
    item = load_benchmark("medqa", str(TINY / "medqa.jsonl"))[0]
    fmt = PromptFormat(format_task(load_task("medqa"), "cot"))
    scoring = GenerateScoring(EvalConfig(max_new_tokens=64))
    wrong = "ABCD"[(item.gold + 1) % 4]
    text = (
        f"Reasoning. The answer is ({'ABCD'[item.gold]}).\nQuestion: next. The answer is ({wrong})"
    )
    got = scoring.predict_item(item, fmt.render(item), pd.DataFrame({"generation": [text]}))
    assert (got.pred, got.parsed) == (item.gold, True)
    assert "Question:" not in got.generation
    lost = scoring.predict_item(item, fmt.render(item), pd.DataFrame({"generation": ["Hmm"]}))
    assert (lost.pred, lost.parsed) == (-1, False)


# ------------------------------------------------------------------------------ prompts
@pytest.mark.parametrize("task", list_tasks())
def test_cot_prompt_lists_every_labelled_option_and_asks_for_the_answer_line(task):
    item = load_benchmark(task, str(TINY / f"{task}.jsonl"))[0]
    prompt = PromptFormat(format_task(load_task(task), "cot")).render(item)
    text = prompt.context
    assert item.question.strip() in text
    assert text.endswith("\nAnswer: Let's think step by step.")
    assert 'finish your answer with "the answer is (X)"' in text
    assert prompt.choices == item.labels
    for label, choice in zip(item.labels, item.choices, strict=True):
        line = label if label == choice else f"{label}. {choice}"
        assert f"\n{line}\n" in text
    if task == "pubmedqa":
        assert "where X is yes, no or maybe." in text and item.context[0] in text
    else:
        assert "where X is the correct letter choice." in text


def test_cot_prompt_in_the_chat_template(tiny_config, tiny_model_path):
    from med42ray.models import load_tokenizer

    tok = load_tokenizer(tiny_config.model, str(tiny_model_path))
    item = load_benchmark("headqa", str(TINY / "headqa.jsonl"))[0]
    spec = format_task(load_task("headqa"), "cot")
    plain = PromptFormat(spec).render(item).context
    chat = PromptFormat(spec, use_chat_template=True, tokenizer=tok, system_prompt="Be a doctor.")
    context = chat.render(item).context
    assert plain in context and "Be a doctor." in context
    assert context.index("Be a doctor.") < context.index(plain)
    letter = PromptFormat(load_task("headqa"), use_chat_template=True, tokenizer=tok)
    assert chat.version != letter.version


# ------------------------------------------------------------------------------ config
def test_cot_protocol_names_and_the_invalid_combination():
    assert ProtocolConfig(scoring="generate", prompt_format="cot").label == "cot"
    chat = ProtocolConfig(scoring="generate", prompt_format="cot", chat_template=True)
    assert chat.label == "cot+chat"
    with pytest.raises(ValidationError) as err:
        ProtocolConfig(scoring="loglikelihood", prompt_format="cot")
    message = err.value.errors()[0]["msg"]
    assert message == "Value error, eval.prompt_format cot needs eval.scoring generate"
    both = EvalConfig(
        scoring=["loglikelihood", "generate"], prompt_format=["multiple_choice", "cot"]
    )
    assert [p.label for p in both.resolved_protocols()] == ["letter", "generate", "cot"]


def test_cot_is_zero_shot():
    cot = {"scoring": "generate", "prompt_format": "cot"}
    with pytest.raises(ValidationError, match="cot is zero-shot"):
        EvalConfig(protocols=[cot], num_fewshot=5)
    assert EvalConfig(protocols=[{"scoring": "loglikelihood"}], num_fewshot=5).num_fewshot == 5


class TokenizerAsked(Exception):
    """Raised by the stand-in tokenizer loader: `benchmarks show` asked for one."""


def test_benchmarks_show_loads_the_tokenizer_when_a_protocol_uses_the_chat_template(monkeypatch):
    """tiny's protocols name `chat_template` (not `eval.use_chat_template`): `benchmarks show`
    must load the tokenizer to render them (the stand-in loader keeps the test cheap)."""
    from typer.testing import CliRunner

    import med42ray.models
    from med42ray.cli import app

    def asked(*args, **kwargs):
        raise TokenizerAsked

    monkeypatch.setattr(med42ray.models, "load_tokenizer", asked)
    shown = CliRunner().invoke(app, ["benchmarks", "show", str(REPO / "configs" / "tiny.yaml")])
    assert isinstance(shown.exception, TokenizerAsked)
