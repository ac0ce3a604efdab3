"""The evaluation stage: benchmark loaders, lm-eval-style prompts, engines and the runner.

`run_eval` is imported lazily, so `med42ray.eval.benchmarks` (used by the config and the data
stage's decontamination) stays a light import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_eval"]


def __getattr__(name: str) -> Any:
    if name == "run_eval":
        from med42ray.eval.runner import run_eval

        return run_eval
    raise AttributeError(f"module 'med42ray.eval' has no attribute {name!r}")
