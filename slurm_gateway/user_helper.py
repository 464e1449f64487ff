"""``slurm-gateway-user-helper``: what the gateway runs as a user, besides sbatch and scancel.

The service account runs this one program as users through ``sudo -n -u USER`` (see the
sudo rule in the README). Each subcommand prints exactly one JSON object on one line and
exits 0 when it could report; a usage error exits 2.

- ``env-check PREFIX [--timeout S]``: the probe of a job environment
  (:func:`slurm_gateway.envcheck.probe`).
- ``env-id PREFIX``: the environment's identity as the user sees it
  (:func:`slurm_gateway.envcheck.stat_identity`): ``{"identity": [...]}``, null if there is none.
- ``log-dir USER_DIRECTORY SUBDIRECTORY``: create the user's log directory and a
  subdirectory in it (:func:`slurm_gateway.userfs.prepare_log_directory`); the cluster name
  to record in it, if any, is read as one line from standard input, since command lines
  are visible to every user and the cluster name is a secret capability.
  ``{"ok": true}`` or ``{"error": SENTENCE}``.
- ``log-tail FILE [--bytes N]``: the last lines of a log (:func:`slurm_gateway.userfs.
  read_log_tail`). ``{"lines": [...]}`` or ``{"error": SENTENCE}``.

Running as the user, it can only do what the user can; it refuses relative paths and
``..`` components and sanitizes nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys

from .userfs import prepare_log_directory, read_log_tail

# envcheck (subprocess, selectors, signal) is imported by the env-check and env-id commands
# only: log-dir runs for every new cluster, on the way to its sbatch.

# The longest cluster name read from standard input.
MAX_STDIN_LINE = 4096


def _absolute_path(value: str) -> str:
    if not value.startswith("/") or ".." in value.split("/"):
        raise argparse.ArgumentTypeError(f"{value!r} is not an absolute path without '..'")
    return value


def _positive_number(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return number


def _positive_integer(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slurm-gateway-user-helper",
        description="Run as a user by slurm-gateway; prints one JSON line.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env-check", help="report the versions in a job environment")
    env.add_argument("prefix", type=_absolute_path)
    env.add_argument("--timeout", type=_positive_number, default=30.0, help="seconds")
    env_id = commands.add_parser("env-id", help="the stat identity of a job environment")
    env_id.add_argument("prefix", type=_absolute_path)
    log_dir = commands.add_parser(
        "log-dir", help="create a log directory (cluster name, if any, on standard input)"
    )
    log_dir.add_argument("user_directory", type=_absolute_path)
    log_dir.add_argument("subdirectory")
    tail = commands.add_parser("log-tail", help="the last lines of a log file")
    tail.add_argument("file", type=_absolute_path)
    tail.add_argument("--bytes", type=_positive_integer, default=65536, help="read at most N")
    return parser


def _log_tail(path: str, max_bytes: int) -> dict:
    try:
        return {"lines": read_log_tail(path, max_bytes=max_bytes)}
    except FileNotFoundError:
        return {"error": "no such file"}
    except ValueError as exc:
        return {"error": str(exc)}
    except OSError as exc:
        return {"error": f"cannot read {path}: {exc.strerror or exc}"}


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line), do the subcommand, print its JSON line."""
    args = _parser().parse_args(argv)
    if args.command == "env-check":
        from .envcheck import probe

        result = probe(args.prefix, timeout=args.timeout)
    elif args.command == "env-id":
        from .envcheck import stat_identity

        try:
            result = {"identity": stat_identity(args.prefix)}
        except OSError as exc:
            result = {"error": f"cannot stat {args.prefix}: {exc.strerror or exc}"}
    elif args.command == "log-dir":
        line = sys.stdin.readline(MAX_STDIN_LINE) if sys.stdin else ""
        problem = prepare_log_directory(
            args.user_directory, args.subdirectory, line.strip() or None
        )
        result = {"error": problem} if problem else {"ok": True}
    else:
        result = _log_tail(args.file, args.bytes)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
