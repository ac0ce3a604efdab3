import hashlib
from pathlib import Path

import pytest
import torch

from med42ray.config import MED42_SYSTEM_PROMPT, ModelConfig, TinyModelConfig
from med42ray.models import load_model, load_tokenizer, resolve_model_path
from med42ray.tiny import build_tiny_model
from tests.conftest import REPO


def digest_tree(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_tiny_build_is_deterministic(tmp_path: Path) -> None:
    spec = TinyModelConfig(num_hidden_layers=1)
    first = build_tiny_model(spec, tmp_path / "a")
    second = build_tiny_model(spec, tmp_path / "b")
    files = digest_tree(first)
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not any(name.endswith(".bin") for name in files)
    assert files == digest_tree(second)
    other = build_tiny_model(TinyModelConfig(num_hidden_layers=1, seed=1), tmp_path / "c")
    assert digest_tree(other)["model.safetensors"] != files["model.safetensors"]
    assert digest_tree(other)["tokenizer.json"] == files["tokenizer.json"]


def test_tiny_round_trip_through_from_pretrained(tiny_config, tiny_model_path: Path) -> None:
    cfg = tiny_config.model
    assert resolve_model_path(cfg) == str(tiny_model_path)  # cached, not rebuilt
    model = load_model(cfg)
    tokenizer = load_tokenizer(cfg)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size // model.config.num_attention_heads >= 64
    assert model.config.vocab_size == len(tokenizer)
    assert model.dtype == torch.float32
    text = "Metformin is the first-line treatment for type 2 diabetes."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))
    assert torch.isfinite(logits).all()
    generated = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == len(ids) + 3


def test_chat_template_is_med42_with_assistant_mask(tiny_config, tiny_model_path: Path) -> None:
    tokenizer = load_tokenizer(tiny_config.model)
    chat = [
        {"role": "system", "content": MED42_SYSTEM_PROMPT},
        {"role": "user", "content": "What causes malaria?"},
        {"role": "assistant", "content": "Plasmodium parasites."},
    ]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    assert text == (
        f"<|system|>: {MED42_SYSTEM_PROMPT}\n<|prompter|>:What causes malaria?\n"
        "<|assistant|>:Plasmodium parasites.</s>\n"
    )
    prompt = tokenizer.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|prompter|>:What causes malaria?\n<|assistant|>:")
    out = tokenizer.apply_chat_template(
        chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    answer = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(answer) == "Plasmodium parasites.</s>"


def test_config_chat_template_overrides_tokenizer(tiny_model_path: Path) -> None:
    cfg = ModelConfig(chat_template="{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    tokenizer = load_tokenizer(cfg)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "[hi]"


def test_local_model_folders_resolve_absolute_and_key_stages_by_content(
    tiny_model_path: Path, tmp_path: Path, monkeypatch
) -> None:
    import shutil

    from med42ray.config import load_config
    from med42ray.experiment import base_model_id
    from med42ray.models import local_model_dir

    local = tmp_path / "models" / "base"
    shutil.copytree(tiny_model_path, local)
    monkeypatch.chdir(tmp_path)
    assert local_model_dir("models/base") == local.resolve()
    assert resolve_model_path(ModelConfig(name_or_path="models/base")) == str(local.resolve())
    assert local_model_dir("meta-llama/Llama-2-7b-hf") is None
    assert resolve_model_path(ModelConfig(name_or_path="org/model")) == "org/model"
    cfg = load_config(REPO / "configs" / "tiny.yaml", {"model.name_or_path": "models/base"})
    before = base_model_id(cfg)
    (local / "model.safetensors").write_bytes(b"other weights")
    assert base_model_id(cfg) != before  # new weights in the same folder: stages rerun


def test_the_revision_follows_a_hub_id_given_as_a_path(monkeypatch) -> None:
    """A hub id resolved on a worker and passed on as `path` keeps the config's revision."""
    from transformers import AutoTokenizer

    seen = {}

    def fake(target, **kwargs):
        seen[target] = kwargs["revision"]
        raise RuntimeError("stop")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake)
    cfg = ModelConfig(name_or_path="org/model", revision="abc123")
    for path in (None, "org/model"):
        with pytest.raises(RuntimeError):
            load_tokenizer(cfg, path)
    assert seen == {"org/model": "abc123"}
