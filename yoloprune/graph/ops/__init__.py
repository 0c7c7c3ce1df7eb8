"""How each torch operation moves channel labels: a dict from function object to handler, filled by the
modules of this package (``pointwise``: element-wise ops, reductions, products; ``layers``: convolutions, linear
layers, norms, pooling; ``shapes``: concatenation, splits, indexing, views).

Every handler receives the tracer and the call (with its real output, so shapes never need to be re-derived) and
states, position by position, which channels of its inputs and outputs are the same. Anything it cannot keep
consistent is frozen with a reason; operations missing from the table freeze what they touch and are reported as
errors unless those channels are frozen anyway.
"""

from yoloprune.graph.ops import layers, pointwise, shapes
from yoloprune.graph.ops.base import HANDLERS, SKIP

__all__ = ["HANDLERS", "SKIP", "layers", "pointwise", "shapes"]
