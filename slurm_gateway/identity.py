"""Who may have Dask clusters run as them: checked before anything runs as a user.

The gateway runs commands as the user a client authenticated as (``sudo -n -u USER``).
That name comes from an authenticator, so it is checked here first: it must be a plain
POSIX user name (nothing sudo or a command line could read as an option or a ``#uid``),
name a real account that is neither root, the gateway's own service account nor a system
account, and belong to the group the site allows, if any.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Portable POSIX user names: lower case, not starting with a digit or '-', at most 32
# characters. ``\Z`` (not ``$``, which also matches before a final newline) so that
# ``POSIX_NAME.match`` is as strict as ``fullmatch``.
POSIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")


@dataclass(frozen=True)
class UserPolicy:
    """The site's rule for who may use the gateway, beyond being a real, ordinary user."""

    min_uid: int = 1000  # accounts below this uid are system accounts
    max_uid: int = 60000  # and above it (Debian: nobody, daemons such as slurm, 60001+)
    allowed_group: str = ""  # members only (primary or supplementary); "" for any group


def user_problem(
    name: Any,
    policy: UserPolicy,
    *,
    service_uid: int,
    getpwnam: Callable[[str], Any] = pwd.getpwnam,
    getgrnam: Callable[[str], Any] = grp.getgrnam,
    getgrouplist: Callable[[str, int], list[int]] = os.getgrouplist,
) -> str | None:
    """Why ``name`` may not have jobs run as it, as one sentence for the client; None if it may.

    ``service_uid`` is the uid of the gateway's own account. The lookups are parameters so
    that every refusal can be tested without touching the machine's accounts.
    """
    if not isinstance(name, str) or not POSIX_NAME.match(name):
        shown = repr(name)
        if len(shown) > 64:
            shown = shown[:61] + "..."
        return (
            f"{shown} is not a user name this gateway accepts: names are 1 to 32 lower-case "
            "letters, digits, '_' or '-', not starting with a digit or '-'; "
            "sign in with your cluster account name."
        )
    try:
        entry = getpwnam(name)
    except KeyError:
        return (
            f"There is no account named {name} on this cluster; sign in with your cluster "
            "account name, or ask your admins for an account."
        )
    if entry.pw_uid == 0 or name == "root":
        return "root cannot run Dask clusters; sign in as your own user."
    if entry.pw_uid == service_uid:
        return (
            f"{name} is the gateway's own service account, and the gateway's own service "
            "account cannot run clusters; sign in as your own user."
        )
    if not policy.min_uid <= entry.pw_uid <= policy.max_uid:
        return (
            f"{name} is a system account (uid {entry.pw_uid}), and only accounts with uids "
            f"{policy.min_uid} to {policy.max_uid} can run Dask clusters; sign in as your own "
            "user."
        )
    if policy.allowed_group:
        try:
            allowed_gid = getgrnam(policy.allowed_group).gr_gid
        except KeyError:
            return (
                f"The group allowed to use Dask Gateway here, {policy.allowed_group}, does not "
                "exist on this cluster: the site is misconfigured; ask your admins."
            )
        if allowed_gid != entry.pw_gid and allowed_gid not in getgrouplist(name, entry.pw_gid):
            return (
                f"{name} is not a member of {policy.allowed_group}, the group allowed to use "
                "Dask Gateway here; ask your admins."
            )
    return None
