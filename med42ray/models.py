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
import json
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


CHECKSUMS_FILE = "checksums.json"
"""Beside exported weights: {file: sha256}, written by the exporter before it uploads them."""


def weights_identity(name_or_path: str, revision: str | None = None) -> str:
    """What identifies the weights at `name_or_path`: a local folder's content hash (so new
    weights written into the same folder are new weights); an object-store folder's
    `checksums.json` (written with every export, so nothing is downloaded to key it), else its
    file names and sizes; else the hub id at `revision`."""
    from med42ray import storage

    if storage.is_uri(name_or_path):
        sums = storage.join(name_or_path, CHECKSUMS_FILE)
        if storage.is_file(sums):
            return "sha256:" + hashlib.sha256(storage.read_bytes(sums)).hexdigest()
        listing = json.dumps(storage.list_files(name_or_path), sort_keys=True).encode()
        return "listing:" + hashlib.sha256(listing).hexdigest()
    path = Path(name_or_path)
    if path.is_dir():
        return f"sha256:{folder_digest(path)}"
    return f"{name_or_path}@{revision or 'main'}"


def write_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file of a local export folder, written into it as `checksums.json`."""
    sums = {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and p.name != CHECKSUMS_FILE
    }
    (Path(folder) / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=1, sort_keys=True))
    return sums


def model_source(cfg: ModelConfig, mirror: str | None = None) -> str:
    """Where the weights of `cfg` are, found without fetching them: the tiny model's folder
    (built once), an object-store URI as given, a local folder (absolute), a hub id's copy in
    the mirror (`resources.hub_mirror`: `<mirror>/models/<id>`), or the hub id itself."""
    from med42ray import storage
    from med42ray.hub import model_location

    name = cfg.name_or_path
    if name == TINY:
        return str(build_tiny_model(cfg.tiny))
    if storage.is_uri(name):
        return name
    local = local_model_dir(name)
    if local:
        return str(local)
    if not mirror:
        return name
    location = model_location(name, mirror)
    return location if storage.is_uri(location) else str(Path(location).resolve())


def resolve_model_path(cfg: ModelConfig, mirror: str | None = None) -> str:
    """Hub id or folder to hand to `from_pretrained` on this node (`model_source`); what is in
    object storage is copied into this node's cache once (`storage.local_copy`).

    A local folder comes back absolute, so Ray workers load the same folder whatever their
    working directory. Every node calls this itself: a path that one node resolved means
    nothing on another.
    """
    from med42ray import storage

    source = model_source(cfg, mirror)
    return str(storage.local_copy(source)) if storage.is_uri(source) else source


#: What a tokenizer (and its model's config) needs from a model folder: all a driver fetches.
TOKENIZER_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template.*",
    "*.model",
    "vocab.*",
    "merges.txt",
    "adapter_config.json",
)


def resolve_tokenizer_path(cfg: ModelConfig, mirror: str | None = None) -> str:
    """Like `resolve_model_path`, but from object storage only the tokenizer's and config's
    files are fetched: what a driver needs to render prompts, without the weights."""
    from med42ray import storage

    source = model_source(cfg, mirror)
    return str(storage.local_copy(source, TOKENIZER_FILES)) if storage.is_uri(source) else source


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


def _hub_revision(cfg: ModelConfig, target: str) -> str | None:
    """The config's revision when `target` is its hub id (a folder has no revisions)."""
    return cfg.revision if target == cfg.name_or_path and not Path(target).is_dir() else None


def load_tokenizer(cfg: ModelConfig, path: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of `path` (default: the config's model), with the config's chat template."""
    from transformers import AutoTokenizer

    target = path or resolve_model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        target,
        revision=_hub_revision(cfg, target),
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
    target = path or resolve_model_path(cfg)
    return AutoModelForCausalLM.from_pretrained(
        target,
        revision=_hub_revision(cfg, target),
        trust_remote_code=cfg.trust_remote_code,
        token=hub_token(),
        dtype=torch_dtype(cfg.dtype, use_gpu),
        use_safetensors=True,
        **kwargs,
    )
