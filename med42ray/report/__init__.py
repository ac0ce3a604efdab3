"""The report: tables and figures comparing base, full fine-tuning and LoRA across runs."""

from med42ray.report.build import build_report

__all__ = ["build_report"]
