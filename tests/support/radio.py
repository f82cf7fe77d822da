"""Radio configs as a driver receives them, validated by the real config models (no stand-ins)."""

from __future__ import annotations

from typing import Any

__all__ = ["ES920", "P2P", "radio_config"]

#: A RAK3172's ``p2p:`` section: 920.6 MHz, SF10, 125 kHz, 13 dBm.
P2P: dict[str, Any] = {"frequency_hz": 920_600_000, "spreading_factor": 10, "bandwidth_khz": 125, "coding_rate": 0,
                       "preamble": 8, "tx_power_dbm": 13}
#: An ES920LR's ``es920:`` section: channel 3, PAN BEEF, this module 0001 as coordinator, ASCII lines of hex.
ES920: dict[str, Any] = {"bandwidth_khz": 125, "spreading_factor": 10, "channel": 3, "pan_id": "beef",
                         "own_id": "0001", "format": "ascii", "payload_encoding": "hex", "power_dbm": 13,
                         "node": "coordinator"}


def radio_config(name: str, driver: str, *, port: str = "fake://", **sections: Any) -> Any:
    """A ``radios[]`` entry as the config loader makes it (a RadioConfig): ``sections`` are the driver's own section
    (``p2p=P2P``, ``es920={**ES920, "format": "binary"}``); a value the loader refuses raises as it would there."""
    from agent.config import RadioConfig  # pydantic: loaded by the tests that build a driver, not at collection

    return RadioConfig.model_validate({"name": name, "driver": driver, "port": port, **sections})
