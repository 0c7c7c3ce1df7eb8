"""Algorithms: which channels go and how many. ``run`` (prune a model: selection, application, report),
``importance`` (channel scores), ``select`` (per-group counts for ratios and targets), ``latency`` (searching a
latency budget around pruning), ``sparsity`` (group lasso over coupled channels). Builds on ``graph`` and
``adapters``; knows nothing of training, evaluation or export."""
