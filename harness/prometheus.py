"""A real Prometheus server scraping a gateway's /metrics: Debian's ``prometheus`` package,
installed if missing, started directly (no systemd) as the package's ``prometheus`` account
with its own config and data directory, on loopback; queried through its HTTP API.

Also a command for admins trying the metrics out on the dev cluster:
``python3 -m harness.prometheus --target 127.0.0.1:8002 --port 9090 [--token-file F]``
runs one in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from harness.processes import HarnessError, log_tail, run, start_as, stop, wait_until

BINARY = "/usr/bin/prometheus"
ACCOUNT = "prometheus"  # made by Debian's package


def install() -> None:
    """Install Debian's prometheus package if its binary is missing (needs root and apt).
    The package's own service is not started (no systemd here; it would not be ours)."""
    if os.path.exists(BINARY):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"], 900, env=env)
    if out.returncode != 0:
        update = run(["apt-get", "update"], 600, env=env)
        out = run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"], 900, env=env
        )
        if out.returncode != 0:
            raise HarnessError(f"apt-get install prometheus failed: {update.stderr}{out.stderr}")


def scrape_config(target: str, token_file: str | None, interval: str = "1s") -> str:
    """A Prometheus config scraping ``target`` (host:port)/metrics every ``interval``, with
    the gateway's bearer token read from ``token_file`` if given. JSON is valid YAML."""
    job: dict = {
        "job_name": "slurm-gateway",
        "metrics_path": "/metrics",
        "static_configs": [{"targets": [target]}],
    }
    if token_file:
        job["authorization"] = {"type": "Bearer", "credentials_file": token_file}
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [job],
    }
    return json.dumps(config, indent=2)


class Prometheus:
    """One Prometheus server with its work directory (config, token, data, log)."""

    def __init__(self, target: str, port: int, token: str = "", workdir: Path | None = None):
        self.target = target
        self.address = f"127.0.0.1:{port}"
        self.token = token
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="slurm-gateway-prometheus-"))
        self.log = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        """Install if needed, write the config, start, return once it is ready."""
        install()
        config = self.workdir / "prometheus.yml"
        token_file = None
        if self.token:
            token_file = self.workdir / "token"
            token_file.write_text(self.token)
        config.write_text(scrape_config(self.target, str(token_file) if token_file else None))
        (self.workdir / "data").mkdir(exist_ok=True)
        os.chmod(self.workdir, 0o700)
        shutil.chown(self.workdir, ACCOUNT)
        for path in self.workdir.iterdir():
            shutil.chown(path, ACCOUNT)
        argv = [
            BINARY,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
        ]
        self.proc = start_as(ACCOUNT, argv, self.log)
        wait_until(lambda: self.proc.poll() is not None or self.ready(), timeout)
        if not self.ready():
            self.stop()
            raise HarnessError(f"prometheus did not start:\n{log_tail(self.log)}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        """The result vector of an instant query (``/api/v1/query``)."""
        url = f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            answer = json.load(resp)
        if answer.get("status") != "success":
            raise HarnessError(f"query {promql!r} failed: {answer}")
        return answer["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The value of a query with one result (None: no result)."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) != 1:
            raise HarnessError(f"query {promql!r} has {len(result)} results: {result}")
        return float(result[0]["value"][1])

    def targets(self) -> list[dict]:
        """The active scrape targets with their health and last error."""
        with urllib.request.urlopen(f"http://{self.address}/api/v1/targets", timeout=10) as r:
            return json.load(r)["data"]["activeTargets"]

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8002", help="the gateway's metrics")
    parser.add_argument("--port", type=int, default=9090, help="Prometheus' port (loopback)")
    parser.add_argument("--token-file", help="the gateway's metrics_token, if it has one")
    args = parser.parse_args()
    token = Path(args.token_file).read_text().strip() if args.token_file else ""
    server = Prometheus(args.target, args.port, token)
    server.start()
    print(f"Prometheus at http://{server.address}, data in {server.workdir}", flush=True)
    try:
        while server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
