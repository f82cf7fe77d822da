"""The installer's tools: flash a config, check a gateway (doctor), watch its nodes (monitor), read its journal (status)."""
