"""The evaluation stage: lm-eval-style prompts, scoring modes, inference engines and the runner.

``runner`` (the stage: :func:`run_eval`, its Ray actor pool and resumable parts), ``scoring``
(the scoring modes, ``eval.scoring``: the requests, how an engine scores them, the predictions),
``engines`` (Transformers and vLLM behind one interface), ``prompts`` (lm-eval's prompt layout),
``parsing`` (the option a generated answer names) and ``metrics`` (accuracy, stderr, summary).
The benchmark loaders and task specs live in :mod:`med42ray.benchmarks`.

`run_eval` is imported lazily: importing one module of the package (``metrics``, ``prompts``)
does not load the runner.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_eval"]


def __getattr__(name: str) -> Any:
    if name == "run_eval":
        from med42ray.eval.runner import run_eval

        return run_eval
    raise AttributeError(f"module 'med42ray.eval' has no attribute {name!r}")
