"""Load benchmarks for containerd-actors, run side by side with ``ctr`` and a stateless client.

``python -m benchmarks [--quick]`` starts its own private containerd, measures the lifecycle,
exec and control operations, the event fan-out and scale, and writes a JSON file per run, a
markdown summary and PNG plots to ``benchmarks/results``. See benchmarks/README.md.
"""
