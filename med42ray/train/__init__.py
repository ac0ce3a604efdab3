"""Training stage: full fine-tuning (DeepSpeed ZeRO or DDP) or LoRA, one loop, on Ray Train.

`run_training(cfg, train_data, out, eval_data=None, data_key=None, export_to=None) ->
TrainResult` is the entry point (`trainer.py`, the driver); data and export may be local or on
object storage. The worker side is `recipe.py` (setup -> train -> checkpoint -> cleanup); what
varies lives in small objects: `strategies.py` (full or LoRA: what trains, how it is exported),
`engines.py` (DeepSpeed or DDP training engines, and which checkpoint files a rank resumes
from), `checkpoint.py` (the checkpoint layout, the published export and which weights to
score), `merge.py` (LoRA merged after training, in a Ray task). Batching: `data.py` (reading,
per-worker shards, the row schedule), `tokenize.py` (chat template, assistant-only labels),
`packing.py`; `optim.py`, `deepspeed_config.py`, `metrics.py`.
"""

from med42ray.train.trainer import TrainResult, run_training

__all__ = ["TrainResult", "run_training"]
