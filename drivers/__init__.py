"""Hardware behind small interfaces: serial transport, radio module drivers, payload codecs and simulators.

Nothing in this package imports the agent; the agent imports it.
"""
