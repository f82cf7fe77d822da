"""Simulated radio modules and sensor nodes on real pseudo-terminals."""
