"""The embedded tiny offline model: a small Llama and a byte-level BPE tokenizer, built once.

`build_tiny_model` trains the tokenizer on the shipped corpus (with the Med42 chat template),
seeds the weights (optionally pre-trained briefly, `tiny.pretrain`) and saves both as a Hugging
Face folder in the cache, named by a hash of the recipe. Every stage then loads that folder
through `med42ray.models` as it would load `meta-llama/Llama-2-7b-hf`: the offline default
exercises the real loading path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from med42ray.config import MED42_CHAT_TEMPLATE, TinyModelConfig
from med42ray.hub import cache_dir
from med42ray.stages import atomic_dir
from med42ray.tiny.pretrain import PRETRAIN_REVISION, data_digest, pretrain

TINY = "tiny"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
TOKENIZER_CORPUS = ASSETS / "tokenizer_corpus.txt"
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>", "<|system|>", "<|prompter|>", "<|assistant|>"]
_TINY_FORMAT_VERSION = 2  # bump when the build recipe changes


def effective_spec(spec: TinyModelConfig) -> TinyModelConfig:
    """`spec`, without its pre-training when `MED42RAY_TINY_PRETRAIN` is `0`/`off`/`false`.

    The switch is for test suites, which need a tiny model but not a pre-trained one; it is
    part of what the cache key hashes, so the two builds never share a folder.
    """
    off = os.environ.get("MED42RAY_TINY_PRETRAIN", "").strip().lower() in ("0", "off", "false")
    if off and spec.pretrain is not None:
        return spec.model_copy(update={"pretrain": None})
    return spec


def tiny_model_dir(spec: TinyModelConfig, corpus: Path = TOKENIZER_CORPUS) -> Path:
    """Cache folder of the tiny model for `spec`; its name hashes the recipe and the corpus."""
    spec = effective_spec(spec)
    recipe = {"v": _TINY_FORMAT_VERSION, "template": MED42_CHAT_TEMPLATE, **spec.model_dump()}
    if spec.pretrain is not None:
        recipe["pretrain_data"] = data_digest(spec.pretrain.data)
        recipe["pretrain_revision"] = PRETRAIN_REVISION
    key = json.dumps(recipe, sort_keys=True).encode()
    digest = hashlib.sha256(key + corpus.read_bytes()).hexdigest()[:12]
    return cache_dir() / "models" / f"tiny-llama-{digest}"


def train_tiny_tokenizer(spec: TinyModelConfig, corpus: Path = TOKENIZER_CORPUS):
    """Train a byte-level BPE tokenizer on the shipped corpus, with the Med42 chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.read_text(encoding="utf-8").splitlines(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        chat_template=MED42_CHAT_TEMPLATE,
        model_max_length=spec.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(spec: TinyModelConfig | None = None, out: Path | None = None) -> Path:
    """Build (once) and save the tiny Llama and its tokenizer; return the folder.

    The weights are seeded (random, or briefly pre-trained when `spec.pretrain` is set), and
    the build is atomic (a temp folder renamed into place), so building twice gives the same
    files and a crash leaves no half folder. Concurrent builders of one recipe take turns on a
    lock file next to the folder: the second finds the first one's copy instead of rebuilding.
    """
    spec = effective_spec(spec or TinyModelConfig())
    out = Path(out) if out else tiny_model_dir(spec)
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):  # a second builder waits, then finds the first one's copy
        if (out / "config.json").is_file():
            return out
        return _build_tiny_model(spec, out)


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """An exclusive advisory lock next to `out` (no-op where `fcntl` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX; the atomic rename still holds
        yield
        return
    with open(out.parent / f".{out.name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_tiny_model(spec: TinyModelConfig, out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer(spec)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads or spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    if spec.pretrain is not None:
        pretrain(model, tokenizer, spec.pretrain, seed=spec.seed)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out
