"""Where credentials and caches come from: the bottom of the house, imported by every layer.

The Hugging Face token is read from ``HF_TOKEN`` in the environment only (never from a config,
a log or ``runtime_env.env_vars``); built artefacts (the tiny model) live under
``MED42RAY_CACHE``, else ``~/.cache/med42ray``.
"""

from __future__ import annotations

import os
from pathlib import Path

from med42ray import storage


def hub_token() -> str | None:
    """The Hugging Face token, from the environment only."""
    return os.environ.get("HF_TOKEN") or None


def cache_dir() -> Path:
    """Where built artefacts live: `MED42RAY_CACHE`, else `~/.cache/med42ray`."""
    return Path(os.environ.get("MED42RAY_CACHE", Path.home() / ".cache" / "med42ray"))


def dataset_location(repo_id: str, mirror: str | None = None) -> str:
    """Where `datasets.load_dataset` reads hub dataset `repo_id`: the hub itself, or, with a
    mirror (`resources.hub_mirror`: a folder or object-store prefix), its copy at
    `<mirror>/datasets/<owner>/<name>`, laid out as the hub repository is (the same files, the
    dataset card's `configs:` section), so the same loading code reads both. A mirror on object
    storage is copied into this node's cache once (`storage.local_copy`) and read from there."""
    if not mirror:
        return repo_id
    location = f"{mirror.rstrip('/')}/datasets/{repo_id}"
    return str(storage.local_copy(location)) if storage.is_uri(location) else location


def model_location(repo_id: str, mirror: str | None = None) -> str:
    """Where `from_pretrained` reads hub model `repo_id`: the hub, or `<mirror>/models/<id>`."""
    if not mirror:
        return repo_id
    return f"{mirror.rstrip('/')}/models/{repo_id}"
