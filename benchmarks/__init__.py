"""The benchmark orchestrator (``python3 benchmarks/run.py``); see benchmarks/README.md."""
