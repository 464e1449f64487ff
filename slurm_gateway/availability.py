"""Whether the gateway's parts answer: SLURM (slurmctld), accounting (slurmdbd), the
database and the proxy. One :class:`Availability` per gateway is the only record of it:
``/api/health`` (:mod:`slurm_gateway.health`) and the metrics' ``slurm_up`` and
``accounting_up`` (:mod:`slurm_gateway.metrics`) both read it, so they cannot disagree.

What a part said when it failed (SLURM's stderr, a socket path, an SSH target, a URL) is
kept here for the admin (the gateway's log, the admin channel), never for ``/api/health``:
it is logged once when a part starts failing, again at most every
:data:`STILL_FAILING_PERIOD` seconds, and when it answers again, each detail at most
:data:`MAX_DETAIL_CHARS` characters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: The parts whose availability the metrics export (``<part>_up``).
SLURM_PARTS = ("slurm", "accounting")
#: Seconds a SLURM command may be under way before slurmctld counts as not answering
#: (at least; twice the poll period if that is longer).
SLOW_ANSWER = 15.0
#: Seconds between two log lines saying that a part still fails.
STILL_FAILING_PERIOD = 300.0
#: The longest detail kept (and logged) of one answer.
MAX_DETAIL_CHARS = 500


@dataclass(frozen=True)
class Observation:
    """One answer (or failure) from a part, at ``at`` (``time.monotonic()``); ``detail``
    is for the admin only."""

    ok: bool
    detail: str
    at: float


# -- decisions ------------------------------------------------------------------------------


def is_due(seen: Observation | None, now: float, period: float) -> bool:
    """Whether a part was last heard of ``period`` seconds ago or more (or never)."""
    return seen is None or now - seen.at >= period


def hanging_for(pending_since: float | None, now: float, period: float) -> float | None:
    """Seconds the oldest SLURM command under way has waited, if that is longer than
    ``max(SLOW_ANSWER, 2 * period)`` (slurmctld then counts as not answering); else None."""
    if pending_since is None:
        return None
    waited = now - pending_since
    return waited if waited > max(SLOW_ANSWER, 2 * period) else None


def is_up(
    part: str, seen: Observation | None, pending_since: float | None, now: float, period: float
) -> bool | None:
    """Whether ``part`` answers: its last answer, except that SLURM does not while a
    command has hung on it (:func:`hanging_for`). None: not heard of yet."""
    if part == "slurm" and hanging_for(pending_since, now, period) is not None:
        return False
    return None if seen is None else seen.ok


def log_line(
    part: str, was: Observation | None, ok: bool, detail: str, last_logged: float | None, now: float
) -> str | None:
    """The log line for a part's new answer, or None: ``fails`` when it starts failing,
    ``still fails`` when it failed and the last line is :data:`STILL_FAILING_PERIOD`
    seconds old (``last_logged``), ``answers again`` when a failing part answers."""
    if ok:
        return None if was is None or was.ok else f"Health: {part} answers again"
    if was is None or was.ok:
        return f"Health: {part} fails: {detail}"
    if last_logged is None or now - last_logged >= STILL_FAILING_PERIOD:
        return f"Health: {part} still fails: {detail}"
    return None


# -- the record -------------------------------------------------------------------------------


class Availability:
    """The latest answer of each part, and the SLURM commands under way."""

    def __init__(self, period: float, log: logging.Logger):
        self.period = period
        self._log = log
        self.seen: dict[str, Observation] = {}
        self._logged: dict[str, float] = {}  # when each part's last failure line was written
        self._pending: dict[int, float] = {}  # SLURM commands under way: start times

    def note(self, part: str, ok: bool, detail: str) -> None:
        """A part's answer; ``detail`` (what it said) is logged and kept for the admin."""
        now = time.monotonic()
        detail = detail[:MAX_DETAIL_CHARS]
        line = log_line(part, self.seen.get(part), ok, detail, self._logged.get(part), now)
        if line is not None:
            (self._log.info if ok else self._log.warning)("%s", line)
            if not ok:
                self._logged[part] = now
        self.seen[part] = Observation(ok, detail, now)

    @contextmanager
    def waiting_on_slurm(self) -> Iterator[None]:
        """While a command waits for slurmctld (see :func:`hanging_for`)."""
        token = object()
        self._pending[id(token)] = time.monotonic()
        try:
            yield
        finally:
            self._pending.pop(id(token), None)

    @property
    def slurm_busy(self) -> bool:
        """Whether a SLURM command is under way."""
        return bool(self._pending)

    def pending_since(self) -> float | None:
        """When the oldest SLURM command under way started (None: none is)."""
        return min(self._pending.values(), default=None)

    def up(self, part: str, now: float | None = None) -> bool | None:
        """Whether ``part`` answers (see :func:`is_up`)."""
        now = time.monotonic() if now is None else now
        return is_up(part, self.seen.get(part), self.pending_since(), now, self.period)

    def slurm_parts(self) -> dict[str, bool | None]:
        """Whether SLURM and accounting answer (None: not heard of yet): the metrics'
        ``slurm_up`` and ``accounting_up``."""
        now = time.monotonic()
        return {part: self.up(part, now) for part in SLURM_PARTS}
