"""Where credentials and caches come from: the bottom of the house, imported by every layer.

The Hugging Face token is read from ``HF_TOKEN`` in the environment only (never from a config,
a log or ``runtime_env.env_vars``); built artefacts (the tiny model) live under
``MED42RAY_CACHE``, else ``~/.cache/med42ray``.
"""

from __future__ import annotations

import os
from pathlib import Path


def hub_token() -> str | None:
    """The Hugging Face token, from the environment only."""
    return os.environ.get("HF_TOKEN") or None


def cache_dir() -> Path:
    """Where built artefacts live: `MED42RAY_CACHE`, else `~/.cache/med42ray`."""
    return Path(os.environ.get("MED42RAY_CACHE", Path.home() / ".cache" / "med42ray"))
