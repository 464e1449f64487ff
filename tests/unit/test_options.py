"""User options and the checks applied to every cluster's config."""

import math

import pytest
from dask_gateway_server.options import Options

from slurm_gateway.user_options import check_conda_env, default_options, filter_environment


@pytest.mark.parametrize(
    "value, message",
    [
        ("env", "absolute path"),
        ("~/envs/x", "absolute path"),
        ("/x; rm -rf ~", "';'"),
        ("/x$(id)", "'$'"),
        ("/x`id`", "'`'"),
        ("/x\n/y", "'\\n'"),
        ("/x'y", '"\'"'),
        ("/depot/../etc", "'..'"),
        ("/" + "a" * 5000, "limit"),
        ("/x\udcff", "'\\udcff'"),
        (42, "path string"),
    ],
)
def test_bad_conda_env_is_refused_naming_the_field(value, message):
    with pytest.raises(ValueError, match="conda_env") as info:
        check_conda_env(value)
    assert message in str(info.value)


def test_good_conda_env_is_normalized():
    assert check_conda_env("/depot/cms/envs/analysis-2026/") == "/depot/cms/envs/analysis-2026"
    assert check_conda_env("/scratch/a b/env") == "/scratch/a b/env"


def test_notebook_environment_just_works():
    notebook = {
        "HOME": "/home/alice",
        "PATH": "/usr/bin",
        "X509_USER_PROXY": "/tmp/x509up_u1001",
        "PYTHONPATH": "/home/alice/lib",
        "LD_LIBRARY_PATH": "/opt/lib",
        "BASH_FUNC_module%%": "() { eval $(...); }",
        "DASK_GATEWAY__ADDRESS": "http://evil",
        "JUPYTERHUB_API_TOKEN": "secret",
        "MY_SETTING": "multi\nline",
    }
    forwarded, dropped = filter_environment(notebook)
    assert forwarded == {
        "X509_USER_PROXY": "/tmp/x509up_u1001",
        "PYTHONPATH": "/home/alice/lib",
        "LD_LIBRARY_PATH": "/opt/lib",
        "MY_SETTING": "multi\nline",
    }
    assert "HOME" in dropped and "BASH_FUNC_module%%" in dropped


@pytest.mark.parametrize("name", ["", "A=B", "A B", "1ABC", "A\nB", "Ä"])
def test_invalid_variable_names_are_refused(name):
    with pytest.raises(ValueError, match="not a valid variable name"):
        filter_environment({name: "x"})


@pytest.mark.parametrize("value", ["a\x00b", ["list"], None, True])
def test_values_that_cannot_be_exported_are_refused(value):
    with pytest.raises(ValueError, match="env"):
        filter_environment({"GOOD": value})


def _configure(options: Options, request: dict) -> dict:
    return options.get_configuration(options.parse_options(request), user=None)


def test_default_options_give_purdue_style_config():
    config = _configure(
        default_options(),
        {"conda_env": "/depot/x/env", "worker_cores": 2, "worker_memory": 4, "env": {"A": "1"}},
    )
    assert config == {
        "conda_env": "/depot/x/env",
        "worker_cores": 2,
        "worker_memory": 4 * 2**30,
        "environment": {"A": "1"},
    }
    assert "conda_env" not in _configure(default_options(), {})


@pytest.mark.parametrize(
    "request_, field",
    [
        ({"worker_cores": 0}, "worker_cores"),
        ({"worker_cores": 10**9}, "worker_cores"),
        ({"worker_cores": "4; id"}, "worker_cores"),
        ({"worker_cores": 1.5}, "worker_cores"),
        ({"worker_cores": True}, "worker_cores"),
        ({"worker_memory": -1}, "worker_memory"),
        ({"worker_memory": math.nan}, "worker_memory"),
        ({"worker_memory": math.inf}, "worker_memory"),
        ({"conda_env": "relative/env"}, "conda_env"),
    ],
)
def test_bad_option_values_name_the_field(request_, field):
    with pytest.raises((ValueError, TypeError), match=field):
        _configure(default_options(max_worker_cores=8), request_)
