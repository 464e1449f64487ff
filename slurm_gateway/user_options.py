"""User options: the Purdue-style defaults, and the checks every cluster's config passes.

:func:`default_options` is what users see in ``gateway.cluster_options()``; admins
may replace it with any dask-gateway ``Options``. Whatever the options, the backend
runs :func:`check_conda_env` and :func:`filter_environment` on the resulting config,
so no admin-defined option can smuggle an unchecked path or variable into a job.
:func:`request_body_problem` checks create, ``scale`` and ``adapt`` requests the same way.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import Iterable, Mapping

from dask_gateway_server.options import Float, Integer, Options, String
from dask_gateway_server.options import Mapping as MappingField

GiB = 2**30

#: Variables never forwarded from a user's ``env``: they would break the job, point at the
#: notebook's machine, or undermine the gateway's security settings. Shell-style patterns.
DEFAULT_ENVIRONMENT_DENY = (
    "DASK_GATEWAY_*",
    "DASK_DISTRIBUTED__COMM__*",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PATH",
    "PWD",
    "OLDPWD",
    "HOSTNAME",
    "TMPDIR",
    "TERM",
    "SHLVL",
    "_",
    "MAIL",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "SHELLOPTS",
    "BASHOPTS",
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_*",
    "PS1",
    "PS2",
    "PS4",
    "PROMPT_COMMAND",
    "LD_PRELOAD",
    "LD_AUDIT",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "CONDA_*",
    "SLURM_*",
    "SBATCH_*",
    "SALLOC_*",
    "SRUN_*",
    "SUDO_*",
    "SSH_*",
    "JUPYTERHUB_*",
    "JPY_*",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters a conda/venv prefix may contain. Shell metacharacters are refused outright
# (they are quoted anyway; refusing them gives users a clear error instead of a failed job).
_PATH_CHARACTER = re.compile(r"[\w./+@%:=, -]")
MAX_PATH = 4096
MAX_ENV_VALUE = 128 * 1024
MAX_ENV_TOTAL = 1024 * 1024


def check_conda_env(path: object) -> str:
    """The normalized absolute path of a conda or venv prefix, or ``ValueError`` saying why not."""
    if not isinstance(path, str):
        raise ValueError(f"conda_env must be a path string, got {type(path).__name__}")
    if len(path) > MAX_PATH:
        raise ValueError(f"conda_env is {len(path)} characters long; the limit is {MAX_PATH}")
    if not path.startswith("/"):
        raise ValueError(
            f"conda_env must be an absolute path such as /depot/mygroup/envs/analysis, "
            f"got {path[:200]!r}"
        )
    bad = sorted({c for c in path if not _PATH_CHARACTER.fullmatch(c)})
    if bad:
        raise ValueError(
            f"conda_env contains {', '.join(map(repr, bad))}, which an environment path may not "
            "contain; give the plain absolute path of a conda or venv prefix"
        )
    if ".." in path.split("/"):
        raise ValueError(f"conda_env must not contain '..': give the real path, got {path!r}")
    return os.path.normpath(path)


def _is_denied(name: str, deny: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in deny)


def filter_environment(
    env: Mapping[object, object], deny: Iterable[str] = DEFAULT_ENVIRONMENT_DENY
) -> tuple[dict[str, str], list[str]]:
    """Split a user's ``env`` into what is forwarded and the deny-listed names dropped.

    ``env=dict(os.environ)`` from a notebook must just work, so deny-listed names are
    dropped quietly (and reported to the caller for logging); names that are not valid
    variable names and values that cannot be exported are refused with ``ValueError``.
    """
    if not isinstance(env, Mapping):
        raise ValueError(f"env must be a mapping of variable names to values, got {env!r:.100}")
    deny = tuple(deny)
    forwarded: dict[str, str] = {}
    dropped: list[str] = []
    total = 0
    for name, value in env.items():
        if isinstance(name, str) and _is_denied(name, deny):
            dropped.append(name)
            continue
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(
                f"env: {name!r:.100} is not a valid variable name (letters, digits and _, "
                f"not starting with a digit); remove it from env"
            )
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"env: the value of {name} must be a string, got {value!r:.100}")
        text = str(value)
        if "\x00" in text:
            raise ValueError(f"env: the value of {name} contains a NUL byte; remove it")
        if len(text) > MAX_ENV_VALUE:
            raise ValueError(f"env: the value of {name} is longer than {MAX_ENV_VALUE} characters")
        total += len(name) + len(text)
        if total > MAX_ENV_TOTAL:
            raise ValueError(f"env is larger than {MAX_ENV_TOTAL} bytes; forward fewer variables")
        forwarded[name] = text
    return forwarded, dropped


def _options_to_config(options, user) -> dict:
    cores = options.worker_cores
    if isinstance(cores, bool):
        raise ValueError("worker_cores must be an integer number of cores, got a bool")
    memory = options.worker_memory
    if not math.isfinite(memory) or memory <= 0:
        raise ValueError(f"worker_memory must be a positive number of GB, got {memory}")
    config = {
        "worker_cores": cores,
        "worker_memory": int(memory * GiB),
        "environment": dict(options.env),
    }
    if options.conda_env:
        config["conda_env"] = check_conda_env(options.conda_env)
    return config


def default_options(
    *,
    worker_cores: int = 1,
    max_worker_cores: int = 8,
    worker_memory_gb: float = 4,
    max_worker_memory_gb: float = 64,
) -> Options:
    """The Purdue-style options: ``conda_env``, ``worker_cores``, ``worker_memory`` (GB), ``env``.

    Use in the config file to change the bounds, e.g.
    ``c.SlurmBackend.cluster_options = default_options(max_worker_cores=16)``.
    """
    return Options(
        String("conda_env", default="", label="Conda or venv prefix (empty: the site default)"),
        Integer(
            "worker_cores", default=worker_cores, min=1, max=max_worker_cores, label="Worker cores"
        ),
        Float(
            "worker_memory",
            default=worker_memory_gb,
            min=0.25,
            max=max_worker_memory_gb,
            label="Worker memory (GB)",
        ),
        MappingField("env", default={}, label="Environment variables"),
        handler=_options_to_config,
    )


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def request_body_problem(action: str, body) -> str | None:
    """Why the JSON body of a create, scale or adapt request is unacceptable, or None."""
    if not isinstance(body, dict):
        return f"{action} expects a JSON object"
    if action == "create":
        options = body.get("cluster_options")
        if options is not None and not isinstance(options, dict):
            return f"cluster_options must be a JSON object of option values, got {options!r:.100}"
        return None
    if action == "scale":
        count = body.get("count")
        return None if _is_count(count) else f"scale expects a non-negative integer, got {count!r}"
    minimum, maximum = body.get("minimum"), body.get("maximum")
    for name, value in (("minimum", minimum), ("maximum", maximum)):
        if value is not None and not _is_count(value):
            return f"adapt: {name} must be a non-negative integer, got {value!r}"
    if minimum is not None and maximum is not None and minimum > maximum:
        return f"adapt: minimum ({minimum}) must not exceed maximum ({maximum})"
    if not isinstance(body.get("active", True), bool):
        return "adapt: active must be true or false"
    return None
