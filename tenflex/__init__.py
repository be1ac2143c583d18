"""tenflex: compress neural networks with flexible layers and tensor methods.

A flexible layer ``y = b + W g(Vᵀ x)`` has activation functions ``g_r`` that are
weighted sums of basis functions; it is learned from a pretrained subnetwork's
outputs and Jacobians by constrained coupled matrix-tensor factorization.
See the book for the mathematics and the package modules for the API.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tenflex")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
