"""Workflows built from the pipeline: ``sweep`` (mAP versus latency over MACs targets), ``recipe`` (a yaml run of
prune, fine-tune, evaluate, export, bench), ``demo`` (the whole job on synthetic data) and ``sensitivity``
(per-stage pruning cost and ratios)."""
