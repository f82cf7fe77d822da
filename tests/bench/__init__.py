"""Benchmarks of the agent and the backend.

* ``python -m tests.bench.run [--quick]``: throughput, SOS latency, memory, idle wakeups and the 1,000,000-reading
  drain of the agent; the bridge and the fleet benches below as sections of the same run.
* ``python -m tests.bench.bench_bridge [--quick]``: the bridge against raw InfluxDB writes, 1 against 2 bridges.
* ``python -m tests.bench.bench_fleet [--quick]``: 1,000 gateways against one Mosquitto and one bridge.

Not part of the test run (pytest ignores ``tests/bench``). Every figure is printed next to an anchor measured in
the same run on the same machine, because the machines it runs on are shared and noisy.
"""
