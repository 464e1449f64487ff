# slurm-gateway config for the dev cluster made by scripts/dev-cluster.sh.
# Everything listens on loopback. Users are who munge says they are (their uid): no
# password, as on a site's login node. Plain http is for this single-host setup only: a site
# gives the proxy TLS and a privileged port (README, "Connect your site's users", Munge).
c = get_config()  # noqa: F821

c.SlurmGateway.address = "127.0.0.1:8001"  # private API, reached through the proxy
c.Proxy.address = "127.0.0.1:8000"  # what clients use (HTTP API, dashboards, TLS to schedulers)
c.SlurmGateway.authenticator_class = "slurm_gateway.munge_auth.MungeAuthenticator"
c.MungeAuthenticator.service_account = "slurmgw"  # the account the gateway runs as
c.MungeAuthenticator.audiences = ["http://127.0.0.1:8000"]  # the proxy, as clients reach it
# The proxy runs as a service of its own (`slurm-gateway proxy`): restarting the gateway
# then does not cut users' connections to their clusters.
c.Proxy.externally_managed = True

c.SlurmBackend.listen_host = "127.0.0.1"  # all compute nodes are this host
c.SlurmBackend.allowed_group = "dask-users"  # the group of the sudo rule
c.SlurmBackend.slurm_poll_period = 2

c.SlurmClusterConfig.conda_env = "/opt/slurm-gateway/envs/default"
c.SlurmClusterConfig.scheduler_partition = "schedulers"
c.SlurmClusterConfig.partition = "workers"
c.SlurmClusterConfig.scheduler_cores = 1
c.SlurmClusterConfig.scheduler_memory = "1 G"
