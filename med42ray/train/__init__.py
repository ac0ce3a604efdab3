"""Training stage: full fine-tuning (DeepSpeed ZeRO or DDP) or LoRA, one loop, on Ray Train.

`run_training(cfg, train_data, out, eval_data=None) -> TrainResult` is the entry point; the
pieces (tokenise/mask, pack, collate, strategies, engines, optimiser/schedule, DeepSpeed config)
are importable on their own.
"""

from med42ray.train.trainer import TrainResult, run_training

__all__ = ["TrainResult", "run_training"]
