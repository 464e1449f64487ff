"""Render sbatch scripts from Jinja2 templates, shell-quoting every value.

The template environment quotes by default, the way HTML templates escape by
default: every ``{{ value }}`` that is a string is passed through
:func:`shlex.quote`, unless it is a :class:`ShellSafe` (text this module built
itself, such as an already-joined command line). Admin templates therefore
cannot forget to quote a user's value. ``#SBATCH`` lines are comments to the
shell, read by sbatch's own parser (which treats ``\\`` as an escape even inside
single quotes), so values used there go through the ``directive`` filter, which
accepts only characters that parser takes literally.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

import jinja2

BUILTIN_TEMPLATES = Path(__file__).parent / "templates"


class ShellSafe(str):
    """A string already safe to paste into a bash script as it is."""


def shell_quote(value: object) -> ShellSafe:
    """Quote one value for bash; refuse NUL bytes, which no shell word can hold."""
    if isinstance(value, ShellSafe):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"cannot put a {type(value).__name__} into a job script: {value!r}")
    text = str(value)
    if "\x00" in text:
        raise ValueError("a value in the job script contains a NUL byte")
    return ShellSafe(shlex.quote(text))


def shell_join(argv: Iterable[object]) -> ShellSafe:
    """A command line with each argument quoted."""
    return ShellSafe(" ".join(shell_quote(a) for a in argv))


# What an #SBATCH value may hold: no space, quote, backslash, "$", "#" or control character,
# each of which sbatch's parser of #SBATCH lines treats specially.
_DIRECTIVE_VALUE = re.compile(r"^[A-Za-z0-9_@%:=,./+&|!*<>()\[\]^~-]*$")


def directive_value_problem(value: str) -> str | None:
    """Why ``value`` cannot go on an ``#SBATCH`` line as it is, or None."""
    if _DIRECTIVE_VALUE.match(value):
        return None
    bad = sorted({c for c in value if not _DIRECTIVE_VALUE.match(c)})
    return (
        f"{value[:200]!r} contains {', '.join(map(repr, bad))}; an #SBATCH value may hold only "
        "letters, digits and _@%:=,./+&|!*<>()[]^~-"
    )


def sbatch_directive(value: object) -> ShellSafe:
    """A value for an ``#SBATCH`` line, refusing what sbatch would not take literally."""
    text = str(value)
    problem = directive_value_problem(text)
    if problem:
        raise ValueError(problem)
    return shell_quote(text)


def _finalize(value: object) -> str:
    if value is None:
        raise ValueError("a job template printed an unset value (None)")
    return shell_quote(value)


def template_environment(template_dirs: Iterable[str | Path] = ()) -> jinja2.Environment:
    """A Jinja environment that looks in ``template_dirs`` first, then the built-in templates."""
    search_path = [str(p) for p in template_dirs if p] + [str(BUILTIN_TEMPLATES)]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search_path),
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["directive"] = sbatch_directive
    env.filters["command"] = shell_join
    return env


def render_job_script(env: jinja2.Environment, template: str, context: Mapping) -> str:
    """Render one job script (``scheduler.sh.j2`` or ``worker.sh.j2``)."""
    return env.get_template(template).render(**context)
