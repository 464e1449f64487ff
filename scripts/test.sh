#!/usr/bin/env bash
# The test command (run as root): brings up everything the suite needs by itself -- the dev
# SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, three slurmd), users alice and bob, the
# service account and its sudo rule, the job and gateway environments -- then runs pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -q`.
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bash "$repo/scripts/dev-cluster.sh" up
bash "$repo/scripts/build-envs.sh"
cd "$repo"
exec /opt/slurm-gateway/venv/bin/python -m pytest -p no:cacheprovider "$@"
