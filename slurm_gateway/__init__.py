"""slurm-gateway: a SLURM backend for Dask Gateway."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("slurm-gateway")
except PackageNotFoundError:  # running from a source checkout
    __version__ = "0.0.0+source"
