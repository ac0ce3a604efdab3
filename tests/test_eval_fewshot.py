"""k-shot prompts byte for byte as lm-evaluation-harness renders them (golden tests).

lm-eval's own tasks (its installed YAMLs, `!function`s resolved) read real-schema rows from
memory instead of the hub, are seeded as its evaluator seeds them (`simple_evaluate` ->
`task.set_fewshot_seed(seed=fewshot_random_seed)`, default 1234) and build every document's
requests in document order (`build_all_requests`). Ours: the same rows as local files, the
runner's few-shot pool (`runner.fewshot_items`: the sibling `<file>.<fewshot_split>.jsonl`) and
`PromptFormat.render` in document order. Contexts and continuations must be identical.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import jinja2
import lm_eval
import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.config.task import TaskConfig
from lm_eval.tasks._yaml_loader import load_yaml

from med42ray.benchmarks import (
    BenchmarkItem,
    TaskSpec,
    cloze_task,
    list_tasks,
    load_benchmark,
    load_task,
)
from med42ray.config import MED42_CHAT_TEMPLATE, EvalConfig
from med42ray.eval.prompts import PromptFormat, render_text
from med42ray.eval.runner import fewshot_items

FIX = Path(__file__).parent / "fixtures" / "benchmarks"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
K = 5
#: lm-eval's task YAML for each of ours (MMLU subjects: `mmlu/default/<task>.yaml`).
LM_EVAL_YAML = {
    "medqa": "medqa/medqa.yaml",
    "medmcqa": "medmcqa/medmcqa.yaml",
    "pubmedqa": "pubmedqa/pubmedqa.yaml",
    "headqa": "headqa/headqa_en.yaml",
}


def fixture_rows(*names: str) -> list[dict[str, Any]]:
    return [json.loads(line) for name in names for line in (FIX / name).read_text().splitlines()]


def rotated(options: list[str], gold: int, shift: int) -> tuple[list[str], int]:
    """The options turned by `shift` places, and where the gold one lands."""
    shift %= len(options)
    return options[shift:] + options[:shift], (gold - shift) % len(options)


def medqa_rows(split: str, n: int) -> list[dict[str, Any]]:
    """GBaker/MedQA-USMLE-4-options-hf rows (lm-eval's dataset): each distinct."""
    rows = []
    for i in range(n):
        base = fixture_rows("medqa_hf.jsonl")[i % 5]
        endings, label = rotated([base[f"ending{j}"] for j in range(4)], base["label"], i)
        row = {**base, "id": f"{split}-{i:05d}", "sent1": f"Case {i}. {base['sent1']}"}
        rows.append({**row, **{f"ending{j}": e for j, e in enumerate(endings)}, "label": label})
    return rows


def medmcqa_rows(split: str, n: int) -> list[dict[str, Any]]:
    """openlifescienceai/medmcqa rows (0-based `cop`): each distinct."""
    base_rows = fixture_rows("medmcqa.jsonl", "medmcqa.train.jsonl")
    rows = []
    for i in range(n):
        base = base_rows[i % len(base_rows)]
        options, cop = rotated([base[f"op{c}"] for c in "abcd"], base["cop"], i)
        row = {**base, "id": f"{split}-{i:04d}", "question": f"({i}) {base['question']}"}
        rows.append(
            {**row, **{f"op{c}": o for c, o in zip("abcd", options, strict=True)}, "cop": cop}
        )
    return rows


def mmlu_rows(split: str, n: int) -> list[dict[str, Any]]:
    """cais/mmlu rows of one subject: each distinct."""
    base_rows = fixture_rows("mmlu_anatomy.jsonl", "mmlu_anatomy.dev.jsonl")
    rows = []
    for i in range(n):
        base = base_rows[i % len(base_rows)]
        choices, answer = rotated(base["choices"], base["answer"], i)
        question = f"{base['question']} ({split} {i})"
        rows.append({"question": question, "subject": "clinical_knowledge", "choices": choices})
        rows[-1]["answer"] = answer
    return rows


#: our task -> (its rows' maker, test split size, few-shot split size)
CASES = {
    "medqa": (medqa_rows, 12, 40),  # a pool over 21: random.sample's set-based path
    "medmcqa": (medmcqa_rows, 10, 15),  # 21 or fewer: its list-based path
    "mmlu_clinical_knowledge": (mmlu_rows, 8, 5),  # MMLU's dev split: 5 per subject
}


def lm_eval_yaml(task: str) -> Path:
    """lm-eval's YAML for one of our tasks."""
    return LM_EVAL_TASKS / LM_EVAL_YAML.get(task, f"mmlu/default/{task}.yaml")


@pytest.fixture(scope="module")
def tokenizer(tiny_config: Any) -> Any:
    """The tiny model's tokenizer (trained in a second, no model built)."""
    from med42ray.tiny.build import train_tiny_tokenizer

    return train_tiny_tokenizer(tiny_config.model.tiny)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Per task: its test split's and few-shot split's rows, also written as our local files
    (`<task>.jsonl` and the sibling `<task>.<fewshot_split>.jsonl`)."""
    root = tmp_path_factory.mktemp("fewshot")
    out = {}
    for task, (make, n_test, n_pool) in CASES.items():
        spec = load_task(task)
        splits = {spec.test_split: make("test", n_test), spec.fewshot_split: make("pool", n_pool)}
        for split, rows in splits.items():
            name = f"{task}.jsonl" if split == spec.test_split else f"{task}.{split}.jsonl"
            (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[task] = {"root": root, **splits}
    return out


def lm_eval_task(
    task: str, splits: dict[str, list[dict]], k: int, path: Path | None = None, **config: Any
) -> Any:
    """lm-eval's own task for `task` (or the YAML at `path`), reading `splits` from memory,
    seeded as its evaluator seeds it (`simple_evaluate`: `set_config(num_fewshot)`, then
    `set_fewshot_seed`)."""
    cfg = load_yaml(path or lm_eval_yaml(task))
    for key in ("tag", "group", "task_list"):  # not task config (lm-eval's TaskFactory)
        cfg.pop(key, None)
    dataset = {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    cfg.update(custom_dataset=lambda **_: dataset, **config)
    lm_task = ConfigurableTask(config=cfg)
    lm_task.set_config(key="num_fewshot", value=k)
    lm_task.set_fewshot_seed(seed=EvalConfig.model_fields["seed"].default)
    return lm_task


def lm_eval_prompts(lm_task: Any, **build: Any) -> list[tuple[str, tuple[str, ...]]]:
    """(context, continuations) of every document, as `build_all_requests` makes them."""
    lm_task.build_all_requests(rank=0, world_size=1, **build)
    docs: dict[int, list[Any]] = {}
    for inst in lm_task.instances:
        docs.setdefault(inst.doc_id, []).append(inst)
    return [
        (insts[0].arguments[0], tuple(i.arguments[1] for i in sorted(insts, key=lambda i: i.idx)))
        for _, insts in sorted(docs.items())
    ]


def our_format(task: str, data: dict, k: int, spec: TaskSpec | None = None, **kw: Any):
    """Our test items and format, the pool found as the runner finds it."""
    spec = spec or load_task(task)
    test_file = str(data[task]["root"] / f"{task}.jsonl")
    items = load_benchmark(task, test_file)
    return items, PromptFormat(
        spec, num_fewshot=k, fewshot_items=fewshot_items(spec, test_file, k), **kw
    )


def rendered(fmt: PromptFormat, items: list[BenchmarkItem]) -> list[tuple[str, tuple[str, ...]]]:
    return [(p.context, p.continuations) for p in map(fmt.render, items)]


# ----------------------------------------------------------------------- settings as lm-eval's
def test_seed_splits_and_delimiters_are_lm_evals():
    """The few-shot seed, and every task's test split, few-shot split (lm-eval falls back to
    `training_split`, then `validation_split`), sampler and delimiters, as lm-eval's YAMLs.
    (PubMedQA's `train` is the same name for other rows: BigBio's fold 0 there, see prompts.)"""
    default = inspect.signature(lm_eval.simple_evaluate).parameters["fewshot_random_seed"].default
    assert EvalConfig.model_fields["seed"].default == default == 1234
    assert PromptFormat.__dataclass_fields__["seed"].default == default
    fields = TaskConfig.__dataclass_fields__
    defaults = {f: fields[f].default for f in ("target_delimiter", "fewshot_delimiter")}
    tasks = [*LM_EVAL_YAML, *(t for t in list_tasks() if t.startswith("mmlu_"))]
    assert len(tasks) == 10
    for task in tasks:
        theirs, ours = load_yaml(lm_eval_yaml(task), resolve_func=False), load_task(task)
        split = next(
            theirs.get(s)
            for s in ("fewshot_split", "training_split", "validation_split")
            if theirs.get(s)
        )
        sampler = (theirs.get("fewshot_config") or {}).get("sampler", "default")
        assert (ours.test_split, ours.fewshot_split) == (theirs["test_split"], split), task
        assert ours.fewshot_sampler == {"default": "random"}.get(sampler, sampler), task
        for key, value in defaults.items():
            assert getattr(ours, key) == theirs.get(key, value), (task, key)
        assert ours.description == theirs.get("description", ""), task


# ------------------------------------------------------------------------- golden: k-shot
@pytest.mark.parametrize("k", [0, K])
@pytest.mark.parametrize("task", list(CASES))
def test_prompts_equal_lm_eval(task, k, data):
    """Every document of the test split, in order, zero-shot and 5-shot."""
    spec = load_task(task)
    splits = {s: data[task][s] for s in (spec.test_split, spec.fewshot_split)}
    expected = lm_eval_prompts(lm_eval_task(task, splits, k))
    items, fmt = our_format(task, data, k)
    assert rendered(fmt, items) == expected
    assert len(expected) == len(data[task][spec.test_split])
    contexts = [context for context, _ in expected]
    assert all(c.count(spec.fewshot_delimiter) >= k for c in contexts)
    if k and spec.fewshot_sampler == "random":  # the shots change from item to item
        assert len({c.split(spec.fewshot_delimiter)[0] for c in contexts}) > 1


def test_cloze_mmlu_5shot_equals_lm_eval_continuation(data):
    """Our cloze formulation of MMLU is lm-eval's `mmlu_<subject>_continuation`, shots too."""
    task = "mmlu_clinical_knowledge"
    path = LM_EVAL_TASKS / "mmlu" / "continuation" / f"{task}.yaml"
    splits = {s: data[task][s] for s in ("test", "dev")}
    expected = lm_eval_prompts(lm_eval_task(task, splits, K, path=path))
    items, fmt = our_format(task, data, K, spec=cloze_task(load_task(task)))
    assert rendered(fmt, items) == expected
    assert expected[0][0].count("\nAnswer: ") == K


def test_shots_are_one_task_stream_in_document_order(data):
    """`limit` (a prefix) draws the prefix's shots; another subset (lm-eval's `--samples`)
    draws the stream afresh for its own documents; an item rendered again keeps its shots."""
    task = "medqa"
    splits = {s: data[task][s] for s in ("test", "train")}
    full = lm_eval_prompts(lm_eval_task(task, splits, K))
    items, fmt = our_format(task, data, K)
    assert rendered(fmt, items[:4]) == lm_eval_prompts(lm_eval_task(task, splits, K), limit=4)
    assert rendered(fmt, items[:4]) == full[:4]
    assert rendered(fmt, items) == full  # the first four keep their shots
    subset = list(range(5, 12))
    sampled = lm_eval_prompts(lm_eval_task(task, splits, K), samples=subset)
    items, fresh = our_format(task, data, K)
    assert rendered(fresh, [items[i] for i in subset]) == sampled
    assert sampled != full[5:]
    other_seed = PromptFormat(fresh.spec, num_fewshot=K, fewshot_items=fresh.fewshot_items, seed=1)
    assert rendered(other_seed, items) != full


@pytest.mark.parametrize("task", ["medqa", "mmlu_clinical_knowledge"])
def test_shots_from_the_test_split_leave_the_item_out(task, data):
    """lm-eval removes the document from its own shots only when `fewshot_split` is the test
    split (random: k + 1 drawn, the item dropped; first_n: the first k others)."""
    spec = load_task(task).model_copy(update={"fewshot_split": "test"})
    test = data[task]["test"]
    expected = lm_eval_prompts(lm_eval_task(task, {"test": test}, K, fewshot_split="test"))
    items, fmt = our_format(task, data, K, spec=spec)
    assert rendered(fmt, items) == expected
    for item, (context, _) in zip(items, expected, strict=True):
        assert context.count(render_text(spec, item)) == 1  # the item itself: last, once
        assert item not in fmt.shots(item)


# --------------------------------------------------------------------------- chat template
def hf_chat_template(tokenizer: Any) -> Callable[..., str]:
    """lm-eval's `HFLM.apply_chat_template` (models/huggingface.py), which `build_all_requests`
    receives as `chat_template`: retried without the system turn if the template rejects it."""

    def apply(chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        kwargs = {
            "tokenize": False,
            "add_generation_prompt": add_generation_prompt,
            "continue_final_message": not add_generation_prompt,
        }
        try:
            return tokenizer.apply_chat_template(chat_history, **kwargs)
        except jinja2.exceptions.TemplateError:
            history = [m for m in chat_history if m["role"] != "system"]
            return tokenizer.apply_chat_template(history, **kwargs)

    return apply


NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


@pytest.mark.parametrize("template", [MED42_CHAT_TEMPLATE, NO_SYSTEM_TEMPLATE])
@pytest.mark.parametrize("task", ["medqa", "mmlu_clinical_knowledge"])
def test_chat_fewshot_equals_lm_eval_multiturn(task, template, data, tokenizer):
    """`--apply_chat_template` (few-shot as multi-turn): system prompt and description in the
    system turn, one user/assistant pair per shot, continuations without the delimiter."""
    tokenizer.chat_template = template
    system = "You are a careful clinician."
    spec = load_task(task)
    splits = {s: data[task][s] for s in (spec.test_split, spec.fewshot_split)}
    expected = lm_eval_prompts(
        lm_eval_task(task, splits, K),
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        system_instruction=system,
        chat_template=hf_chat_template(tokenizer),
    )
    items, fmt = our_format(
        task, data, K, use_chat_template=True, tokenizer=tokenizer, system_prompt=system
    )
    assert rendered(fmt, items) == expected
    assert expected[0][1][0] == "A"
    assert (system in expected[0][0]) == (template == MED42_CHAT_TEMPLATE)
