"""The gateway's private files: its state directory and the secrets kept in it.

The state directory holds the database (clusters' API tokens, encrypted TLS keys), the
database encryption key and the proxy token. Nothing in it may be readable by users, so the
gateway refuses to run with a state directory or secret file that others can open.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def ensure_private_directory(path: Path) -> None:
    """Create ``path`` (mode 0700) if missing; refuse one that group or others can open."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _OTHERS:
        raise PermissionError(
            f"the gateway's state directory {path} has mode {mode:o}: it holds the database and "
            f"keys and must be private to the service account (chmod 700 {path})"
        )


def read_or_create_secret(path: Path, make: Callable[[], bytes]) -> bytes:
    """The secret in ``path``; on first use write ``make()`` there with mode 0600.

    Two processes starting together (gateway and proxy) agree on one secret: only the
    first creation succeeds and the other reads what it wrote."""
    ensure_private_directory(path.parent)
    if not path.exists():
        # Written whole under a temporary name, then linked into place: a reader never sees
        # a half-written secret, and a second creator's link fails and it reads the first's.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(make())
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _OTHERS:
        raise PermissionError(f"{path} has mode {mode:o}: it must be private (chmod 600 {path})")
    return path.read_bytes().strip()
