"""Check a job environment before submitting: run as the user, judged by the gateway.

``slurm-gateway-user-helper env-check PREFIX`` runs :func:`probe` as the user (through the
sudo rule) and prints one JSON line: whether the prefix can be read and what versions of
python, dask, distributed and dask-gateway its own python reports. That python is the
user's code: it runs in a session of its own, with a time limit and a cap on what it
prints, and everything it started is killed afterwards. :func:`env_problem` turns that
report into the one error a user sees, naming the problem and the fix.
:func:`stat_identity` is what envcache.py tells an unchanged environment by (the helper's
``env-id``).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time

PACKAGES = ("dask", "distributed", "dask-gateway")

#: What an environment is identified by: per path, its stat fields or None if absent.
Identity = tuple[tuple[int, ...] | None, ...]
_CHUNK = 65536

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


def _has_exited(pid: int) -> bool:
    """Whether child ``pid`` has exited, leaving it unreaped (a zombie keeps its group id)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _run_capped(argv: list[str], timeout: float, max_output: int) -> tuple[int, str, str, str]:
    """Run ``argv`` in a new session; (returncode, stdout, stderr, problem).

    ``problem`` is "timeout" if it did not close its output and exit within ``timeout``
    seconds, "output" if it printed more than ``max_output`` bytes (stdout and stderr
    together), else "". Whatever happens, its whole process group then gets SIGKILL, before
    the program itself is reaped so that the group id cannot have been reused meanwhile.
    """
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out, err = bytearray(), bytearray()
    problem = ""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, out)
            selector.register(proc.stderr, selectors.EVENT_READ, err)
            while selector.get_map() and not problem:
                left = deadline - time.monotonic()
                events = selector.select(left) if left > 0 else []
                if not events:
                    problem = "timeout"
                for key, _ in events:
                    chunk = os.read(key.fd, _CHUNK)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    key.data.extend(chunk)
                if len(out) + len(err) > max_output:
                    problem = "output"
        while not problem and not _has_exited(proc.pid):
            if time.monotonic() >= deadline:
                problem = "timeout"
            time.sleep(0.01)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:  # nothing left in the group
            pass
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), problem


def probe(prefix: str, timeout: float = 30, max_output: int = 65536) -> dict:
    """What the user's environment at ``prefix`` holds, as seen by the calling user.

    Its python runs in a session of its own, for at most ``timeout`` seconds and
    ``max_output`` bytes of output; then everything it started is killed.
    """
    python = os.path.join(prefix, "bin", "python")
    for path, absent in ((prefix, "missing"), (python, "no-python")):
        try:
            os.stat(path)
        except FileNotFoundError:
            return {"error": absent}
        except OSError:
            return {"error": "unreadable"}
    if not os.access(python, os.X_OK):
        return {"error": "unreadable"}
    try:
        returncode, stdout, stderr, problem = _run_capped(
            [python, "-I", "-c", _PROBE, *PACKAGES], timeout, max_output
        )
    except OSError as exc:
        return {"error": "python-broken", "detail": str(exc)}
    if problem == "timeout":
        return {"error": "timeout", "detail": f"did not answer within {timeout:g} s"}
    if problem == "output":
        return {"error": "python-broken", "detail": f"printed more than {max_output} bytes"}
    if returncode != 0:
        return {"error": "python-broken", "detail": stderr.strip()[-500:]}
    lines = stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        report = None
    if not isinstance(report, dict):
        return {"error": "python-broken", "detail": f"printed no report: {stdout.strip()[-500:]!r}"}
    return report


def identity_paths(prefix: str) -> list[str]:
    """The paths whose stat identifies the environment at ``prefix``. Raises
    ``PermissionError`` if its ``lib`` may not be listed (not silently left out)."""
    lib = os.path.join(prefix, "lib")
    try:
        names = os.listdir(lib)
    except (FileNotFoundError, NotADirectoryError):
        names = []
    fixed = [os.path.join(prefix, p) for p in ("bin/python", "conda-meta", "pyvenv.cfg")]
    site = [os.path.join(lib, n, "site-packages") for n in sorted(names) if n.startswith("python")]
    return [prefix, *fixed, *site]


def stat_identity(prefix: str) -> Identity | None:
    """The identity of the environment at ``prefix`` as seen by the caller, or None if its
    prefix or python cannot be seen (then only a full check can tell what is wrong).
    Raises ``PermissionError`` if a path may not be looked at."""
    identity = []
    for number, path in enumerate(identity_paths(prefix)):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if number < 2:  # the prefix or its python
                return None
            identity.append(None)
            continue
        identity.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(identity)


def identity_from_json(value: object) -> Identity | None:
    """An identity as printed by the user helper (lists), or None if it is not one."""
    if not isinstance(value, list):
        return None
    identity = []
    for item in value:
        if item is None:
            identity.append(None)
        elif isinstance(item, list) and all(
            isinstance(n, int) and not isinstance(n, bool) for n in item
        ):
            identity.append(tuple(item))
        else:
            return None
    return tuple(identity)


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
    if error == "timeout":
        return (
            f"conda_env {prefix}: its python {report.get('detail', 'did not answer in time')}; "
            f"check that {prefix}/bin/python starts (a slow or hung activation?)"
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
