"""Model and tokenizer loading: every stage goes through `load_model` and `load_tokenizer`.

Both call ``from_pretrained`` on a hub id or a folder. The embedded default
(``model.name_or_path: tiny``) is first built into a cache folder (`med42ray.tiny`) and then
loaded through the very same calls, so the offline path exercises the code that loads
``meta-llama/Llama-2-7b-hf`` on a cluster. Weights load as safetensors only;
``trust_remote_code`` is off unless the config asks; the hub token comes from ``HF_TOKEN`` in
the environment (`med42ray.hub`), never from a config.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from med42ray.config import ModelConfig
from med42ray.hub import hub_token
from med42ray.tiny import TINY, build_tiny_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

REPO = Path(__file__).resolve().parents[1]


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


def weights_identity(name_or_path: str, revision: str | None = None) -> str:
    """What identifies the weights at `name_or_path`: a local folder's content hash (so new
    weights written into the same folder are new weights), else the hub id at `revision`."""
    path = Path(name_or_path)
    if path.is_dir():
        return f"sha256:{folder_digest(path)}"
    return f"{name_or_path}@{revision or 'main'}"


def resolve_model_path(cfg: ModelConfig) -> str:
    """Hub id or folder to hand to `from_pretrained`; builds the tiny model when asked for.

    A local folder comes back absolute, so Ray workers load the same folder whatever their
    working directory.
    """
    if cfg.name_or_path == TINY:
        return str(build_tiny_model(cfg.tiny))
    local = local_model_dir(cfg.name_or_path)
    return str(local) if local else cfg.name_or_path


def bf16_available(use_gpu: bool) -> bool:
    """Whether `auto` precision means bf16: on GPUs that support it, never on CPU."""
    import torch

    return use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def torch_dtype(name: str, use_gpu: bool) -> torch.dtype:
    """`auto` is bf16 on GPUs that support it and fp32 elsewhere (CPU training, old GPUs)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if bf16_available(use_gpu) else torch.float32
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
