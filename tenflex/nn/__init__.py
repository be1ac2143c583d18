"""Neural-network modules of tenflex."""

from tenflex.nn.flexible import FlexibleLayer

__all__ = ["FlexibleLayer"]
