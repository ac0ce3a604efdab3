"""The shipped tiny knowledge set: current with its generator, loadable, honestly held out."""

import importlib.util
import json
from pathlib import Path

import pytest

from med42ray.benchmarks import list_tasks, load_benchmark

from .conftest import REPO

TINY = REPO / "data" / "tiny"


def generator():
    spec = importlib.util.spec_from_file_location(
        "make_tiny_data", REPO / "scripts" / "make_tiny_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shipped_files_are_current(tmp_path: Path) -> None:
    generator().main(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    shipped = sorted(p.relative_to(TINY) for p in TINY.rglob("*.jsonl"))
    assert fresh == shipped
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (TINY / rel).read_bytes(), rel


@pytest.mark.parametrize(
    "path", sorted((TINY / "benchmarks").glob("*.jsonl")), ids=lambda p: p.stem
)
def test_benchmarks_load_through_the_real_loaders(path: Path) -> None:
    assert path.stem in list_tasks()
    items = load_benchmark(path.stem, str(path))
    assert len(items) >= 10
    assert all(0 <= item.gold < len(item.choices) for item in items)


def test_held_out_phrasing_never_trains_except_planted_copies() -> None:
    mod = generator()
    questions = {
        (rec.get("question") or rec.get("qtext"))
        for path in (TINY / "benchmarks").glob("*.jsonl")
        for rec in read_jsonl(path)
    }
    corpus_text = "\n".join(p.read_text() for p in (TINY / "corpora").glob("*.jsonl"))
    leaked = [q for q in questions if json.dumps(q)[1:-1] in corpus_text]
    assert len(leaked) == mod.PLANTED_CONTAMINATIONS


def test_pretraining_text_states_no_real_fact() -> None:
    mod = generator()
    text = (TINY / "pretrain" / "pretrain.jsonl").read_text()
    for fact in mod.load_facts():
        statement, question, test_question = mod.TEMPLATES[fact["relation"]]
        for template in (statement, question, test_question):
            assert mod.fill(template, fact) not in text
