#!/usr/bin/env bash
# Build the two Python environments of the dev setup, from Debian's /usr/bin/python3 so that
# every user can run them (the machine's default python3 lives under /root, mode 700):
#   /opt/slurm-gateway/envs/default  the default job environment (conda_envs/default-requirements.txt)
#   /opt/slurm-gateway/venv          the gateway itself (this project) plus the test client
# Both get the client's munge authentication (client/, slurm-gateway-client), as a site installs
# it into its default job environment (batch jobs calling Gateway()) and its notebook environment.
# Idempotent: an environment is rebuilt only when its requirements changed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${SLURM_GATEWAY_PREFIX:-/opt/slurm-gateway}
python=${SLURM_GATEWAY_PYTHON:-/usr/bin/python3}

# build_env DIR STAMP_INPUT PIP_ARGS...: (re)create DIR when the stamp input changed.
build_env() {
    local dir=$1 stamp=$2
    shift 2
    if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then
        return 0
    fi
    echo "build-envs: building $dir"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/pip" install --quiet --upgrade pip
    "$dir/bin/pip" install --quiet "$@"
    echo "$stamp" > "$dir/.stamp"
}

mkdir -p "$prefix/envs"
build_env "$prefix/envs/default" \
    "$(sha256sum < "$repo/conda_envs/default-requirements.txt")" \
    -r "$repo/conda_envs/default-requirements.txt"

# The gateway venv: dependencies when pyproject.toml changes, the project itself every time;
# with the PostgreSQL driver (extra "postgres"; scripts/postgres.sh runs the server).
build_env "$prefix/venv" "$(sha256sum < "$repo/pyproject.toml")" "$repo[test,postgres]"
"$prefix/venv/bin/pip" install --quiet --no-deps --force-reinstall "$repo"

# The munge client class, every time (its only dependency, dask-gateway, is pinned in both).
for env in "$prefix/envs/default" "$prefix/venv"; do
    "$env/bin/pip" install --quiet --no-deps --force-reinstall "$repo/client"
done

# What users' jobs and the service account run: readable by all. Not the whole prefix: other
# parts (a dev JupyterHub's secrets under $prefix/hub) are root's alone.
chmod a+rx "$prefix"
chmod -R a+rX "$prefix/envs" "$prefix/venv"
echo "build-envs: job env $prefix/envs/default, gateway $prefix/venv ready"
