"""Who may have jobs run as them: every refusal of user_problem, with fake account
databases and with the real accounts of this machine."""

import pwd
from types import SimpleNamespace

import pytest

from slurm_gateway.identity import POSIX_NAME, UserPolicy, user_problem

# name: (uid, primary gid)
ACCOUNTS = {
    "alice": (1001, 1002),
    "carol": (1005, 1001),  # dask-users is her primary group
    "dave": (1006, 1006),  # in no allowed group
    "root": (0, 0),
    "toor": (0, 0),  # another name for uid 0
    "slurmgw": (999, 995),
    "daemon": (1, 1),
}
GROUPS = {"dask-users": 1001}
SUPPLEMENTARY = {"alice": [1001]}
SERVICE_UID = 999
ANY_GROUP = UserPolicy()


def _getpwnam(name):
    uid, gid = ACCOUNTS[name]
    return SimpleNamespace(pw_name=name, pw_uid=uid, pw_gid=gid)


def _getgrnam(name):
    return SimpleNamespace(gr_name=name, gr_gid=GROUPS[name])


def _getgrouplist(name, gid):
    return [gid, *SUPPLEMENTARY.get(name, [])]


def _problem(name, policy=ANY_GROUP):
    return user_problem(
        name,
        policy,
        service_uid=SERVICE_UID,
        getpwnam=_getpwnam,
        getgrnam=_getgrnam,
        getgrouplist=_getgrouplist,
    )


@pytest.mark.parametrize(
    "name", ["#1001", "-u", "alice bob", "ALICE", "a" * 40, "", None, 1001, "alice\n", "1abc"]
)
def test_names_that_are_not_posix_user_names_are_refused_before_any_lookup(name):
    def no_lookup(*args):
        raise AssertionError("looked up an invalid name")

    problem = user_problem(
        name,
        UserPolicy(),
        service_uid=SERVICE_UID,
        getpwnam=no_lookup,
        getgrnam=no_lookup,
        getgrouplist=no_lookup,
    )
    assert problem is not None
    assert "lower-case letters, digits, '_' or '-'" in problem
    assert repr(name)[:60] in problem


def test_a_long_name_is_shown_cut():
    problem = _problem("x" * 1000)
    assert "x" * 100 not in problem and "..." in problem


def test_posix_name_accepts_ordinary_names_only():
    for name in ["alice", "_svc", "a", "bob-2", "a" * 32]:
        assert POSIX_NAME.match(name), name
    for name in ["a" * 33, "alice$", "al.ice", "alice\n", "-alice", "9lives"]:
        assert not POSIX_NAME.match(name), name


def test_an_ordinary_user_may_run_clusters():
    assert _problem("alice") is None
    assert _problem("alice", UserPolicy(allowed_group="dask-users")) is None


def test_unknown_account():
    assert _problem("zed") == (
        "There is no account named zed on this cluster; sign in with your cluster "
        "account name, or ask your admins for an account."
    )


@pytest.mark.parametrize("name", ["root", "toor"])
def test_root_by_name_or_uid(name):
    assert _problem(name).startswith("root cannot run Dask clusters")


def test_the_service_account():
    assert "the gateway's own service account cannot run clusters" in _problem("slurmgw")


def test_system_accounts():
    assert "uids 1000 to 60000 can" in _problem("daemon")
    assert "uids 1002 to 60000 can" in _problem("alice", UserPolicy(min_uid=1002))
    assert "system account (uid 1001)" in _problem("alice", UserPolicy(max_uid=1000))


def test_membership_of_the_allowed_group_primary_or_supplementary():
    policy = UserPolicy(allowed_group="dask-users")
    assert _problem("carol", policy) is None
    assert _problem("alice", policy) is None
    assert _problem("dave", policy) == (
        "dave is not a member of dask-users, the group allowed to use Dask Gateway here; "
        "ask your admins."
    )
    assert _problem("dave") is None  # no group required


def test_a_missing_allowed_group_is_the_sites_misconfiguration():
    problem = _problem("alice", UserPolicy(allowed_group="no-such-group"))
    assert "no-such-group" in problem and "misconfigured" in problem


def _real_uid(name):
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        pytest.skip(f"no account {name} on this machine")


def test_the_real_accounts_of_this_machine():
    service_uid = _real_uid("slurmgw")
    _real_uid("alice")
    policy = UserPolicy(allowed_group="dask-users")

    def problem(name):
        return user_problem(name, policy, service_uid=service_uid)

    assert problem("alice") is None
    assert "service account" in problem("slurmgw")
    assert problem("root").startswith("root cannot")
    assert "system account" in problem("daemon")
    assert "system account" in problem("nobody")  # uid 65534: above UID_MAX
    assert "no account named" in problem("no-such-user-here")
    for name in ["#1001", "-u", "alice bob", "ALICE", "a" * 40, "", None]:
        assert "lower-case letters" in problem(name), name
    if "mallory" in {entry.pw_name for entry in pwd.getpwall()}:
        assert "not a member of dask-users" in problem("mallory")
