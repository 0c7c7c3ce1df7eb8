"""Datasets for yoloprune's own benchmarks (see :mod:`yoloprune.data.synth`)."""

from yoloprune.data import synth
from yoloprune.data.synth import CLASS_NAMES, synthesize

__all__ = ["CLASS_NAMES", "synth", "synthesize"]
