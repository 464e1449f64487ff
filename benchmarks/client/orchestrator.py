"""The client's side of the protocol with the orchestrator (benchmarks/clients.py): lines of
``@@`` and JSON on stdout; the orchestrator answers checkpoints with ``go`` on stdin."""

from __future__ import annotations

import json
import sys


def emit(kind: str, **data) -> None:
    print("@@" + json.dumps({"kind": kind, **data}), flush=True)


def checkpoint(name: str, **data) -> None:
    """Tell the orchestrator we reached ``name``; continue when it answers ``go``."""
    emit("checkpoint", name=name, **data)
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise RuntimeError(f"orchestrator answered {line!r} at checkpoint {name}")
