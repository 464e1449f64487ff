"""The harness shared by the end-to-end tests (``tests/e2e``) and the benchmarks
(``benchmarks/``): running commands, starting processes as other Unix accounts in process
groups of their own, running a gateway as its service account, and reading SLURM's queue.

Standard library only: the benchmark orchestrator runs it under the system ``python3``, the
tests under the gateway's venv. See harness/README.md.
"""
