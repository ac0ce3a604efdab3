"""med42ray: the Med42 study (full fine-tuning vs LoRA for medical LLMs) on Ray."""

__version__ = "0.1.0"
