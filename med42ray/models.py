"""Model and tokenizer loading, and the embedded tiny offline model.

Every stage loads weights through :func:`load_model` / :func:`load_tokenizer`, which call
``from_pretrained`` on a hub id or a folder. The embedded default (``model.name_or_path: tiny``)
is first built into a cache folder by :func:`build_tiny_model` and then loaded through the very
same calls, so the offline path exercises the code that loads ``meta-llama/Llama-2-7b-hf`` on a
cluster. Weights load as safetensors only; ``trust_remote_code`` is off unless the config asks;
the hub token comes from ``HF_TOKEN`` in the environment, never from a config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from med42ray.config import MED42_CHAT_TEMPLATE, ModelConfig, TinyModelConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TINY = "tiny"
REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
TOKENIZER_CORPUS = ASSETS / "tokenizer_corpus.txt"
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>", "<|system|>", "<|prompter|>", "<|assistant|>"]
_TINY_FORMAT_VERSION = 2  # bump when the build recipe changes


def cache_dir() -> Path:
    """Where built artefacts live: `MED42RAY_CACHE`, else `~/.cache/med42ray`."""
    return Path(os.environ.get("MED42RAY_CACHE", Path.home() / ".cache" / "med42ray"))


def hub_token() -> str | None:
    """The Hugging Face token, from the environment only."""
    return os.environ.get("HF_TOKEN") or None


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
        from med42ray.pretrain import PRETRAIN_REVISION, data_digest

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


def _say(message: str) -> None:
    """Progress of a (minutes-long) tiny build, on stderr: the CLI stages show it as it goes."""
    print(f"[med42ray] {message}", file=sys.stderr, flush=True)


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
        from med42ray.pretrain import pretrain

        pretrain(model, tokenizer, spec.pretrain, seed=spec.seed, progress=_say)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first; keep its copy
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def local_model_dir(name_or_path: str) -> Path | None:
    """`name_or_path` as a local model folder (absolute; a relative path is looked up in the
    working directory, then in the repository), or None for a hub id."""
    path = Path(name_or_path)
    for candidate in (path,) if path.is_absolute() else (path, REPO / path):
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    return None


def folder_digest(folder: Path) -> str:
    """sha256 over the files of a model folder (names and bytes), e.g. to key cached stages."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def resolve_model_path(cfg: ModelConfig) -> str:
    """Hub id or folder to hand to `from_pretrained`; builds the tiny model when asked for.

    A local folder comes back absolute, so Ray workers load the same folder whatever their
    working directory.
    """
    if cfg.name_or_path == TINY:
        return str(build_tiny_model(cfg.tiny))
    local = local_model_dir(cfg.name_or_path)
    return str(local) if local else cfg.name_or_path


def torch_dtype(name: str, use_gpu: bool) -> torch.dtype:
    """`auto` is bf16 on GPUs that support it and fp32 elsewhere (CPU training, old GPUs)."""
    import torch

    if name == "auto":
        bf16_ok = use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_ok else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(cfg: ModelConfig, path: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of `path` (default: the config's model), with the config's chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path or resolve_model_path(cfg),
        revision=cfg.revision if path is None else None,
        trust_remote_code=cfg.trust_remote_code,
        token=hub_token(),
    )
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, path: str | None = None, use_gpu: bool = False) -> PreTrainedModel:
    """The causal LM of `path` (default: the config's model), loaded from safetensors only."""
    from transformers import AutoModelForCausalLM

    kwargs = {}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    return AutoModelForCausalLM.from_pretrained(
        path or resolve_model_path(cfg),
        revision=cfg.revision if path is None else None,
        trust_remote_code=cfg.trust_remote_code,
        token=hub_token(),
        dtype=torch_dtype(cfg.dtype, use_gpu),
        use_safetensors=True,
        **kwargs,
    )
