"""The embedded tiny offline model: its build (`build.py`) and short pre-training (`pretrain.py`).

Apart from the loaders every stage uses (`med42ray.models`), which build it on demand when a
config names `model.name_or_path: tiny`.
"""

from med42ray.tiny.build import (
    TINY,
    build_tiny_model,
    effective_spec,
    tiny_model_dir,
    train_tiny_tokenizer,
)

__all__ = ["TINY", "build_tiny_model", "effective_spec", "tiny_model_dir", "train_tiny_tokenizer"]
