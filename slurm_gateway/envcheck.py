"""Check a job environment before submitting: run as the user, judged by the gateway.

``slurm-gateway-env-check PREFIX`` runs as the user (through the sudo rule) and prints
one JSON line: whether the prefix can be read and what versions of python, dask,
distributed and dask-gateway its own python reports. :func:`env_problem` turns that
report into the one error a user sees, naming the problem and the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PACKAGES = ("dask", "distributed", "dask-gateway")

# Run by the environment's own python, isolated (-I) from the caller's variables.
_PROBE = """
import json, sys
from importlib.metadata import PackageNotFoundError, version
found = {"python": sys.version.split()[0]}
for name in sys.argv[1:]:
    try:
        found[name] = version(name)
    except PackageNotFoundError:
        found[name] = None
print(json.dumps(found))
"""


def probe(prefix: str, timeout: float = 30) -> dict:
    """What the user's environment at ``prefix`` holds, as seen by the calling user."""
    python = os.path.join(prefix, "bin", "python")
    try:
        os.stat(prefix)
    except FileNotFoundError:
        return {"error": "missing"}
    except OSError:
        return {"error": "unreadable"}
    try:
        os.stat(python)
    except FileNotFoundError:
        return {"error": "no-python"}
    except OSError:
        return {"error": "unreadable"}
    if not os.access(python, os.X_OK):
        return {"error": "unreadable"}
    try:
        out = subprocess.run(
            [python, "-I", "-c", _PROBE, *PACKAGES], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": "python-broken", "detail": str(exc)}
    if out.returncode != 0:
        return {"error": "python-broken", "detail": out.stderr.strip()[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _series(version: str) -> str:
    return ".".join(version.split(".")[:2])


def env_problem(prefix: str, report: dict, gateway_version: str) -> str | None:
    """The error for a job environment ``report`` (from :func:`probe`), or None if usable."""
    error = report.get("error")
    if error == "missing":
        return (
            f"conda_env {prefix} does not exist; give the path of an existing conda or venv prefix"
        )
    if error == "unreadable":
        return (
            f"conda_env {prefix} is not readable by you; fix its permissions "
            f"(e.g. chmod -R u+rX {prefix})"
        )
    if error == "no-python":
        return (
            f"conda_env {prefix} is not a python environment (it has no bin/python); "
            f"give the prefix of a conda env or venv, e.g. the output of `conda info --base`"
            f" or `echo $CONDA_PREFIX` in the notebook"
        )
    if error:
        return f"conda_env {prefix}: its python does not run ({report.get('detail', error)})"
    series = _series(gateway_version)
    missing = [name for name in PACKAGES if not report.get(name)]
    if missing:
        return (
            f"conda_env {prefix} lacks {', '.join(missing)}; install them into it, e.g. "
            f"`conda install -p {prefix} dask-gateway={series} dask distributed`"
        )
    if _series(report["dask-gateway"]) != series:
        return (
            f"conda_env {prefix} has dask-gateway {report['dask-gateway']}, which does not match "
            f"this gateway ({gateway_version}); install dask-gateway=={series}.* into it"
        )
    if report["dask"] != report["distributed"]:
        return (
            f"conda_env {prefix} has dask {report['dask']} but distributed "
            f"{report['distributed']}; install matching versions of both"
        )
    return None


def main(argv: list[str] | None = None) -> None:
    """``slurm-gateway-env-check PREFIX``: print the probe of PREFIX as one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].startswith("/"):
        sys.exit("usage: slurm-gateway-env-check /absolute/prefix")
    print(json.dumps(probe(argv[0])))
