"""Loaders on real-schema fixtures, and prompts character for character as lm-eval renders them."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import lm_eval
import pytest
import yaml

from med42ray.benchmarks import BenchmarkError, load_benchmark, load_task
from med42ray.eval.prompts import PromptFormat, render_text
from tests.conftest import REPO

FIX = Path(__file__).parent / "fixtures" / "benchmarks"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"  # a missing lm-eval fails, never skips


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIX / name).read_text().splitlines()]


def lm_eval_jinja(yaml_path: Path, field: str = "doc_to_text") -> jinja2.Template:
    """A Jinja field of one of lm-eval's installed task YAMLs (its `include` followed)."""
    raw = yaml.load(yaml_path.read_text(), Loader=yaml.BaseLoader)
    while field not in raw and "include" in raw:
        yaml_path = yaml_path.parent / raw["include"]
        raw = {**yaml.load(yaml_path.read_text(), Loader=yaml.BaseLoader), **raw}
        raw.pop("include", None) if field in raw else None
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(raw[field])


# ------------------------------------------------------------------------------ loaders
@pytest.mark.parametrize(
    ("task", "file", "n", "gold", "subset"),
    [
        ("medqa", "medqa.jsonl", 5, ["D", "C", "B", "B", "C"], "step2&3"),
        ("medqa", "medqa_hf.jsonl", 5, ["D", "C", "B", "B", "C"], None),
        ("medmcqa", "medmcqa.jsonl", 5, ["A", "D", "C", "B", "B"], "Physiology"),
        ("pubmedqa", "pubmedqa_bigbio.jsonl", 4, ["yes", "no", "maybe", "no"], None),
        ("pubmedqa", "pubmedqa_labeled.jsonl", 4, ["yes", "no", "maybe", "no"], None),
        ("headqa", "headqa.jsonl", 4, ["D", "B", "C", "C"], "medicine"),
        ("mmlu_anatomy", "mmlu_anatomy.jsonl", 4, ["D", "D", "C", "A"], "anatomy"),
        ("usmle_sample_exam", "usmle.jsonl", 4, ["B", "B", "C", "B"], "1"),
    ],
)
def test_loaders_read_real_schemas(task, file, n, gold, subset):
    items = load_benchmark(task, str(FIX / file))
    assert len(items) == n  # USMLE drops its image item
    assert [i.labels[i.gold] for i in items] == gold
    assert items[0].subset == subset
    assert all(i.task == task and i.question and len(i.choices) >= 3 for i in items)
    assert len({i.id for i in items}) == n


def test_loader_details():
    hf, gb = (load_benchmark("medqa", str(FIX / f)) for f in ("medqa_hf.jsonl", "medqa.jsonl"))
    assert [i.question for i in hf] == [i.question for i in gb]
    assert [i.choices for i in hf] == [i.choices for i in gb]
    labeled = load_benchmark("pubmedqa", str(FIX / "pubmedqa_labeled.jsonl"))
    assert labeled[0].id == "21645374" and len(labeled[0].context) == 3
    assert load_benchmark("headqa", str(FIX / "headqa.jsonl"))[0].gold_text == "Cefotaxime"
    usmle = load_benchmark("usmle_self_assessment", str(FIX / "usmle.jsonl"), limit=2)
    assert [i.id for i in usmle] == ["sa-1", "sa-2"] and usmle[0].labels[-1] == "E"
    with pytest.raises(BenchmarkError, match="record 0"):
        load_benchmark("medmcqa", str(FIX / "medqa.jsonl"))


# ------------------------------------------------------------------- golden: lm-eval's own
def ours(task: str, file: str) -> list[str]:
    fmt = PromptFormat(load_task(task))
    return [fmt.context(i) for i in load_benchmark(task, str(FIX / file))]


def test_medqa_prompt_equals_lm_eval():
    from lm_eval.tasks.medqa.preprocess_medqa import doc_to_text

    expected = [doc_to_text(r) for r in records("medqa_hf.jsonl")]
    assert ours("medqa", "medqa_hf.jsonl") == expected
    assert ours("medqa", "medqa.jsonl") == expected  # the other schema renders the same
    assert expected[0].endswith("D. Nitrofurantoin\nAnswer:")


def test_medmcqa_prompt_equals_lm_eval():
    from lm_eval.tasks.medmcqa.utils_medmcqa import doc_to_text

    assert ours("medmcqa", "medmcqa.jsonl") == [doc_to_text(r) for r in records("medmcqa.jsonl")]


def test_pubmedqa_prompt_equals_lm_eval():
    from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text

    expected = [doc_to_text(r) for r in records("pubmedqa_bigbio.jsonl")]
    assert ours("pubmedqa", "pubmedqa_bigbio.jsonl") == expected
    assert ours("pubmedqa", "pubmedqa_labeled.jsonl") == expected


def test_headqa_prompt_equals_lm_eval_yaml():
    template = lm_eval_jinja(LM_EVAL_TASKS / "headqa" / "headqa_en.yaml")
    expected = [template.render(**r) for r in records("headqa.jsonl")]
    assert ours("headqa", "headqa.jsonl") == expected
    choices = lm_eval_jinja(LM_EVAL_TASKS / "headqa" / "headqa_en.yaml", "doc_to_choice")
    item = load_benchmark("headqa", str(FIX / "headqa.jsonl"))[0]
    assert str(list(item.choices)) == choices.render(**records("headqa.jsonl")[0])


def test_mmlu_prompt_equals_lm_eval_yaml():
    path = LM_EVAL_TASKS / "mmlu" / "default" / "mmlu_anatomy.yaml"
    raw = yaml.safe_load(path.read_text())
    template = lm_eval_jinja(path.parent / "_default_template_yaml")
    expected = [raw["description"] + template.render(**r) for r in records("mmlu_anatomy.jsonl")]
    assert ours("mmlu_anatomy", "mmlu_anatomy.jsonl") == expected
    assert "\nThe pleura\nA." in expected[2]  # question.strip()


def test_cloze_mmlu_prompt_equals_lm_eval_continuation_yaml():
    from med42ray.benchmarks import cloze_task

    path = LM_EVAL_TASKS / "mmlu" / "continuation" / "mmlu_anatomy.yaml"
    raw = yaml.safe_load(path.read_text())
    template = lm_eval_jinja(path.parent / "_continuation_template_yaml")
    expected = [raw["description"] + template.render(**r) for r in records("mmlu_anatomy.jsonl")]
    fmt = PromptFormat(cloze_task(load_task("mmlu_anatomy")))
    items = load_benchmark("mmlu_anatomy", str(FIX / "mmlu_anatomy.jsonl"))
    assert [fmt.context(i) for i in items] == expected
    # the scored continuations are the option texts (lm-eval: doc_to_choice "{{choices}}")
    prompt = fmt.render(items[0])
    options = records("mmlu_anatomy.jsonl")[0]["choices"]
    assert prompt.continuations == tuple(" " + c for c in options)
    assert fmt.version != PromptFormat(load_task("mmlu_anatomy")).version


def test_cloze_keeps_tasks_that_already_score_answer_texts():
    from med42ray.benchmarks import cloze_task

    for task in ("headqa", "pubmedqa"):
        assert cloze_task(load_task(task)) == load_task(task)
    medqa = cloze_task(load_task("medqa"))
    item = load_benchmark("medqa", str(FIX / "medqa.jsonl"))[0]
    context = PromptFormat(medqa).context(item)
    assert context == f"Question: {item.question.strip()}\nAnswer:"
    assert medqa.metric_list == ("acc", "acc_norm")


def test_cloze_needs_loglikelihood_scoring():
    from med42ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"cloze needs eval\.scoring loglikelihood"):
        load_config(
            REPO / "configs" / "tiny.yaml",
            {"eval.prompt_format": "cloze", "eval.scoring": "generate"},
        )


# -------------------------------------------------------------------- few-shot, chat, hash
def test_fewshot_layout_matches_lm_eval():
    spec = load_task("mmlu_anatomy")
    dev = load_benchmark("mmlu_anatomy", str(FIX / "mmlu_anatomy.dev.jsonl"))
    item = load_benchmark("mmlu_anatomy", str(FIX / "mmlu_anatomy.jsonl"))[0]
    fmt = PromptFormat(spec, num_fewshot=2, fewshot_items=dev)
    shots = [render_text(spec, s) + " " + "ABCD"[s.gold] for s in dev[:2]]  # first_n
    assert fmt.context(item) == spec.description + "\n\n".join([*shots, render_text(spec, item)])
    medqa = load_task("medqa")
    pool = load_benchmark("medqa", str(FIX / "medqa.train.jsonl"))
    test = load_benchmark("medqa", str(FIX / "medqa.jsonl"))
    a = PromptFormat(medqa, num_fewshot=2, fewshot_items=pool, seed=1)
    b = PromptFormat(medqa, num_fewshot=2, fewshot_items=pool, seed=1)
    assert [a.context(i) for i in test] == [b.context(i) for i in test]  # seeded
    assert a.context(test[0]).count("\n\nQuestion:") == 2
    assert a.version != PromptFormat(medqa, num_fewshot=2, fewshot_items=pool, seed=2).version
    with pytest.raises(BenchmarkError, match="5-shot"):
        PromptFormat(medqa, num_fewshot=5, fewshot_items=pool)


def test_chat_template_and_version(tiny_config, tiny_model_path):
    from med42ray.models import load_tokenizer

    tok = load_tokenizer(tiny_config.model, str(tiny_model_path))
    spec = load_task("medqa")
    item = load_benchmark("medqa", str(FIX / "medqa.jsonl"))[0]
    plain = PromptFormat(spec)
    chat = PromptFormat(spec, use_chat_template=True, tokenizer=tok, system_prompt="Be brief.")
    text = chat.context(item)
    assert text == (
        "<|system|>: Be brief.\n<|prompter|>:" + plain.context(item) + "\n<|assistant|>:"
    )
    assert chat.version != plain.version and chat.name.endswith(":chat")
    assert plain.version == PromptFormat(load_task("medqa")).version  # stable
    assert plain.render(item).continuations == (" A", " B", " C", " D")
    pub = PromptFormat(load_task("pubmedqa"))
    pitem = load_benchmark("pubmedqa", str(FIX / "pubmedqa_bigbio.jsonl"))[0]
    assert pub.render(pitem).continuations == (" yes", " no", " maybe")
