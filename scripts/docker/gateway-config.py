# slurm-gateway config for the containers of docker-compose.slurm.yml (mounted as
# /etc/slurm-gateway/config.py in the "gateway" service). Same as
# scripts/dev-gateway-config.py except for addresses: here the scheduler and worker
# jobs run in other containers (c1, c2), so nothing can be loopback-only.
# Users are who munge says they are (their uid), as in the single-host setup. Clients send
# credentials over plain http only to a loopback address, so they run in this container
# (docker compose exec gateway runuser -u alice -- ...) and reach the proxy at
# 127.0.0.1:8000 (`slurm-gateway client-config --public-host 127.0.0.1` prints their
# config); from anywhere else the proxy needs TLS (README, "Connect your site's users", Munge).
c = get_config()  # noqa: F821

c.SlurmGateway.address = "127.0.0.1:8001"  # private API, reached through the proxy
# Inside the container on all interfaces; compose publishes it on the host's
# 127.0.0.1:8000 only.
c.Proxy.address = "0.0.0.0:8000"
c.SlurmGateway.authenticator_class = "slurm_gateway.munge_auth.MungeAuthenticator"
c.MungeAuthenticator.service_account = "slurmgw"  # the account the gateway runs as
c.MungeAuthenticator.audiences = ["http://127.0.0.1:8000"]  # the proxy, as clients reach it

# Schedulers/workers listen on their node container's address and reach the
# gateway API through the proxy by the gateway's service name.
c.SlurmBackend.listen_host = ""
c.SlurmBackend.api_url = "http://gateway:8000/api"
c.SlurmBackend.slurm_poll_period = 2
c.SlurmBackend.allowed_group = "dask-users"  # the group of the sudo rule

c.SlurmClusterConfig.conda_env = "/opt/slurm-gateway/envs/default"
c.SlurmClusterConfig.scheduler_partition = "schedulers"
c.SlurmClusterConfig.partition = "workers"
c.SlurmClusterConfig.scheduler_cores = 1
c.SlurmClusterConfig.scheduler_memory = "1 G"
