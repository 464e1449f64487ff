"""slurm-gateway: a SLURM backend for Dask Gateway.

``__version__`` is looked up on first use, not on import: the user helper, which the
gateway starts as a user for every new cluster, never needs it (the lookup scans the
installed distributions, tens of milliseconds).
"""


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("slurm-gateway")
    except PackageNotFoundError:  # running from a source checkout
        found = "0.0.0+source"
    globals()["__version__"] = found
    return found
