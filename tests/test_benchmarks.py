"""The benchmarks package: task YAMLs as data (`include:`, titles, groups), one normaliser per
schema read by every stage, and the shared pieces the renovation moved below the stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from med42ray.benchmarks import (
    NORMALISERS,
    BenchmarkError,
    RecordError,
    list_tasks,
    load_task,
    task_groups,
    title,
)
from med42ray.benchmarks.tasks import TASKS_DIR, read_task_yaml
from med42ray.config import MED42_CHAT_TEMPLATE, load_config, strategy_config, with_overrides
from med42ray.stages import atomic_dir, atomic_write

from .conftest import CONFIGS


def test_mmlu_subjects_include_the_template_and_keep_their_own_keys() -> None:
    template = yaml.safe_load((TASKS_DIR / "_mmlu_template.yaml").read_text())
    subjects = task_groups()["mmlu_clinical"]
    assert len(subjects) == 6
    for name in subjects:
        spec = load_task(name)
        assert spec.doc_to_text == template["doc_to_text"]
        assert spec.dataset_path == "cais/mmlu" and spec.test_split == "test"
        subject = name.removeprefix("mmlu_")
        assert spec.dataset_name == subject
        assert spec.description.endswith(f"about {subject.replace('_', ' ')}.\n\n")
    assert not any(t.startswith("_") for t in list_tasks())
    with pytest.raises(BenchmarkError, match="unknown benchmark '_mmlu_template'"):
        load_task("_mmlu_template")


def test_include_chain_lets_the_including_file_win(tmp_path: Path) -> None:
    (tmp_path / "_base.yaml").write_text("a: 1\nb: 1\n")
    (tmp_path / "_mid.yaml").write_text("include: _base.yaml\nb: 2\nc: 2\n")
    (tmp_path / "task.yaml").write_text("include: _mid.yaml\nc: 3\n")
    assert read_task_yaml(tmp_path / "task.yaml") == {"a": 1, "b": 2, "c": 3}
    (tmp_path / "bad.yaml").write_text("include: _nope.yaml\n")
    with pytest.raises(BenchmarkError, match=r"include: no such file _nope\.yaml"):
        read_task_yaml(tmp_path / "bad.yaml")


def test_every_task_and_group_has_a_title() -> None:
    for name in list_tasks():
        assert title(name) and title(name) != name
    assert title("mmlu_clinical") == "MMLU clinical, mean of 6"
    assert title("usmle") == "USMLE, mean"
    assert title("average") == "average"  # not a task: the name itself


def test_medqa_normaliser_reads_both_hub_forms_alike() -> None:
    plain = {
        "question": "Q?",
        "options": {"A": "a", "B": "b", "C": "c", "D": "d"},
        "answer_idx": "C",
    }
    hf = {"sent1": "Q?", "ending0": "a", "ending1": "b", "ending2": "c", "ending3": "d", "label": 2}
    one, two = NORMALISERS["medqa"]("medqa", 0, plain), NORMALISERS["medqa"]("medqa", 0, hf)
    assert (one.question, one.choices, one.labels, one.gold) == (
        two.question,
        two.choices,
        two.labels,
        two.gold,
    )
    with pytest.raises(RecordError) as err:
        NORMALISERS["medqa"]("medqa", 0, {**hf, "label": 4})
    assert err.value.reason == "wrong_type:label"


def test_named_chat_template_resolves_to_the_same_config() -> None:
    cfg = load_config(CONFIGS / "llama2-7b-full.yaml")
    assert cfg.model.chat_template == MED42_CHAT_TEMPLATE
    inline = with_overrides(cfg, {"model.chat_template": MED42_CHAT_TEMPLATE})
    assert inline.fingerprint() == cfg.fingerprint()


def test_strategy_config_applies_and_empties_run_overrides() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml")
    lora = strategy_config(cfg, "lora")
    assert lora.train.strategy == "lora" and lora.run.overrides == {}
    assert lora.train.optimizer.lr == cfg.run.overrides["lora"]["train.optimizer.lr"]
    assert strategy_config(cfg, "full").train.optimizer.lr == cfg.train.optimizer.lr


def test_atomic_writes_leave_the_old_output_when_they_fail(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash")
    assert (out / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left
    atomic_write(out / "b.json", "{}")
    assert (out / "b.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.json"]
