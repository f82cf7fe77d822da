"""Throughput, latency and memory benchmark of the agent (``python -m tests.bench.run [--quick]``).

Not part of the test run (pytest ignores ``tests/bench``). Every figure is printed next to an anchor measured in
the same run on the same machine, because the machines it runs on are shared and noisy.
"""
