"""Layers as pairs of plain functions: ``x_forward(...) -> (out, cache)`` and
``x_backward(dout, cache) -> (dx, grads)``, side by side.

The cache holds exactly what the backward needs. Arrays may be NumPy or CuPy:
each function takes its module from its inputs (``xp_of``).
"""
from typing import NamedTuple

from .backend import xp_of  # noqa: F401


class RowGrad(NamedTuple):
    """Gradient of an embedding table that touches only some rows.

    rows:   (U,) int, the distinct rows a batch used (sorted)
    values: (U, D), the gradient for those rows; every other row's is zero.
    The optimiser updates those rows only (lazy Adam) or densifies it.
    """
    rows: object
    values: object
