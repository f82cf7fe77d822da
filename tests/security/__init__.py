"""Attacks by a hostile gateway login, node or config against real processes (issue: backend trust boundary)."""
