"""The tiny model's optional pre-training: deterministic, learning, and part of the cache key."""

import json
from pathlib import Path

import pytest

from med42ray.config import TinyModelConfig, TinyPretrainConfig
from med42ray.models import load_tokenizer
from med42ray.tiny import build_tiny_model, effective_spec, tiny_model_dir, train_tiny_tokenizer
from med42ray.tiny.pretrain import encode_documents, pretrain, read_documents

from .conftest import REPO

DOCS = [
    {"text": "Question: What class of drug is luxten?\nA. statin\nB. biguanide\nAnswer: B"},
    {
        "messages": [
            {"role": "user", "content": "What class of drug is luxten?"},
            {"role": "assistant", "content": "Luxten is a biguanide."},
        ]
    },
    {"text": "Voqui is caused by mutations in HTT."},
]


def small_spec(data: Path, **pretrain) -> TinyModelConfig:
    recipe = {"data": str(data), "steps": 12, "batch_size": 2, "seq_len": 32, "lr": 1e-2}
    return TinyModelConfig(
        vocab_size=400,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=1,
        pretrain=TinyPretrainConfig(**{**recipe, **pretrain}),
    )


@pytest.fixture(autouse=True)
def _pretraining_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite may switch pre-training off (MED42RAY_TINY_PRETRAIN=0); these tests need it."""
    monkeypatch.delenv("MED42RAY_TINY_PRETRAIN", raising=False)


@pytest.fixture()
def docs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pretrain.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS * 8))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(TinyModelConfig(vocab_size=400))


def fresh_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=1, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_pretraining_is_deterministic_and_learns(docs_file: Path, tokenizer) -> None:
    spec = small_spec(docs_file).pretrain
    first, second = fresh_model(tokenizer), fresh_model(tokenizer)
    losses = pretrain(first, tokenizer, spec, seed=0, progress=lambda _: None)
    assert pretrain(second, tokenizer, spec, seed=0, progress=lambda _: None) == losses
    assert len(losses) == spec.steps
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert a.equal(b), name
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    third = fresh_model(tokenizer)
    other = pretrain(third, tokenizer, spec, seed=1, progress=lambda _: None)
    assert other != losses  # the seed orders the documents


def test_cache_key_follows_recipe_and_data(docs_file: Path, tmp_path: Path) -> None:
    base = tiny_model_dir(small_spec(docs_file))
    assert tiny_model_dir(small_spec(docs_file)) == base
    assert tiny_model_dir(small_spec(docs_file, steps=13)) != base
    assert tiny_model_dir(small_spec(docs_file).model_copy(update={"pretrain": None})) != base
    other = tmp_path / "other.jsonl"
    other.write_text(docs_file.read_text() + json.dumps({"text": "One more line."}) + "\n")
    assert tiny_model_dir(small_spec(other)) != base


def test_switch_builds_without_pretraining(docs_file: Path, monkeypatch) -> None:
    plain = tiny_model_dir(small_spec(docs_file).model_copy(update={"pretrain": None}))
    monkeypatch.setenv("MED42RAY_TINY_PRETRAIN", "0")
    assert effective_spec(small_spec(docs_file)).pretrain is None
    assert tiny_model_dir(small_spec(docs_file)) == plain


def test_documents_render_as_bos_text_eos(docs_file: Path, tmp_path: Path) -> None:
    from med42ray.config import ModelConfig

    plain = small_spec(docs_file).model_copy(update={"pretrain": None})
    folder = build_tiny_model(plain, tmp_path / "m")
    tokenizer = load_tokenizer(ModelConfig(), str(folder))
    encoded = encode_documents(tokenizer, DOCS)
    for ids in encoded:
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in ids[1:-1]
    assert tokenizer.decode(encoded[1]) == (
        "<s><|prompter|>:What class of drug is luxten?\n<|assistant|>:Luxten is a biguanide.</s>"
    )
    assert tokenizer.decode(encoded[0], skip_special_tokens=True) == DOCS[0]["text"]


def test_shipped_pretraining_data_reads() -> None:
    docs = read_documents(str(REPO / "data" / "tiny" / "pretrain" / "pretrain.jsonl"))
    assert len(docs) > 1000
    assert any("text" in d for d in docs) and any("messages" in d for d in docs)
