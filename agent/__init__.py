"""denen agent: config, decoding, the durable journal, the MQTT publisher and the CLI."""

__version__ = "0.1.0"
