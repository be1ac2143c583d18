"""Neural-network modules of tenflex."""

from tenflex.nn.flexible import FlexibleLayer
from tenflex.nn.kan import KANLayer, ProjectedKAN

__all__ = ["FlexibleLayer", "KANLayer", "ProjectedKAN"]
