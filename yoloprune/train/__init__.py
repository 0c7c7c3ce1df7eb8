"""Recovering accuracy after pruning: fine-tuning with distillation (ultralytics trainer, or a distillation loop)."""

from yoloprune.train.recover import FinetuneResult, finetune

__all__ = ["FinetuneResult", "finetune"]
