"""The test suite and benchmarks of denen."""

import os

# Test machines (containers, CI) run no time service, so the kernel reports the clock as unsynchronised and the
# agent would hold telemetry waiting for a sync that never comes. The suite trusts the wall clock, as a gateway
# with an RTC does; the clock tests switch this off for the agents they start.
os.environ.setdefault("DENEN_CLOCK", "trusted")
