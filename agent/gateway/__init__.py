"""The gateway runtime: the core that owns the journal, the MQTT link, decoding, edge rules, SOS receipts, field I/O and the clock (docs/architecture.md)."""
