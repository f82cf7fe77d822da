"""The config loads only the drivers its radios name: a RAK3172 gateway never imports the Modbus or Meshtastic
drivers (their modules, pymodbus, protobuf code), which would stay in its memory for as long as it runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import (
    Config,
    P2pConfig,
    RadioConfig,
    config_json_schema,
    parse_config,
)
from agent.config.radio import radio_model
from agent.errors import ConfigError
from drivers.es920lr_settings import Es920Config

REPO = Path(__file__).resolve().parents[2]

RAK_ONLY = """\
gateway: {id: gw-1, site: s}
radios:
  - name: lora0
    driver: rak3172
    port: loop://
    p2p: {spreading_factor: 11}
nodes:
  - {id: "00000001", name: n1, kind: trap, unauthenticated: flag}
"""

# Prints, as JSON, the modules of other drivers a fresh interpreter holds after each step.
_PROBE = """
import json, os, sys
OTHERS = ("drivers.modbus", "drivers.meshtastic", "drivers.meshtastic_packets", "drivers.meshtastic_stream",
          "pymodbus", "google.protobuf", "drivers.es920lr")
DRIVERS = ("drivers.rak3172", "drivers.es920lr", "drivers.modbus", "drivers.meshtastic", "drivers.radio")
def loaded(names):
    return sorted(m for m in sys.modules if m in names or m.startswith(tuple(n + "." for n in names)))
steps = {}
import agent.config
steps["import"] = loaded(DRIVERS)
import agent.config.radio as radio
steps["probe_attributes"] = [hasattr(radio, "__path__"), hasattr(radio, "nothing_here")]
steps["after_probe"] = loaded(DRIVERS)
cfg = agent.config.load_config(sys.argv[1])
steps["load"] = loaded(OTHERS)
steps["section"] = type(cfg.radios[0].p2p).__name__
steps["rak3172_loaded"] = "drivers.rak3172" in sys.modules
print(json.dumps(steps))
"""


def _fresh_interpreter_steps(config: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(config)], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_rak3172_config_loads_no_other_driver(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(RAK_ONLY, encoding="utf-8")
    config.chmod(0o600)
    steps = _fresh_interpreter_steps(config)
    assert steps["import"] == [], "importing agent.config must load no driver module"
    assert steps["probe_attributes"] == [False, False] and steps["after_probe"] == []
    assert steps["load"] == [], "a RAK3172-only config loaded another driver"
    assert steps["section"] == "P2pConfig" and steps["rak3172_loaded"] is True


def test_loaded_and_python_built_radios_get_their_drivers_typed_section() -> None:
    cfg = parse_config(RAK_ONLY)
    assert isinstance(cfg, Config) and isinstance(cfg.radios[0], RadioConfig)
    assert isinstance(cfg.radios[0].p2p, P2pConfig) and cfg.radios[0].p2p.spreading_factor == 11
    built = Config.model_validate({"gateway": {"id": "g", "site": "s"},
                                   "radios": [{"name": "r", "driver": "es920lr", "port": "loop://"}]})
    assert isinstance(built.radios[0].es920, Es920Config)  # the defaults, typed
    alone = RadioConfig.model_validate({"name": "r", "driver": "rak3172", "port": "loop://", "p2p": {}})
    assert isinstance(alone, RadioConfig) and isinstance(alone.p2p, P2pConfig)
    with pytest.raises(ValidationError) as info:
        RadioConfig.model_validate({"name": "r", "driver": "rak3172", "port": "loop://",
                                    "p2p": {"spreading_factor": 13}})
    assert [e["loc"] for e in info.value.errors()] == [("p2p", "spreading_factor")]


def test_a_section_of_a_driver_not_loaded_is_still_refused_at_its_line() -> None:
    text = RAK_ONLY.replace("    p2p: {spreading_factor: 11}\n", "    es920: {channel: 3}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    [issue] = info.value.issues
    assert (issue.line, issue.key) == (6, "radios[0].es920")
    assert "only for driver es920lr" in issue.message and "'rak3172'" in issue.message


def test_range_errors_in_a_loaded_drivers_section_keep_their_units() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(RAK_ONLY.replace("spreading_factor: 11", "tx_power_dbm: 99"))
    [issue] = info.value.issues
    assert issue.key == "radios[0].p2p.tx_power_dbm" and "dBm" in issue.message


def test_radio_models_are_built_once_per_set_of_drivers() -> None:
    assert radio_model(["rak3172"]) is radio_model(("rak3172", "no-such-driver"))
    assert radio_model(["rak3172", "es920lr"]) is radio_model(["es920lr", "rak3172"])
    assert radio_model(["rak3172"]) is not radio_model(["es920lr"])


def test_the_schema_types_every_drivers_section() -> None:
    radio = config_json_schema()["$defs"]["RadioConfig"]["properties"]
    for section, model in (("p2p", "P2pConfig"), ("es920", "Es920Config"), ("modbus", "ModbusConfig"),
                           ("meshtastic", "MeshtasticConfig")):
        assert {"$ref": f"#/$defs/{model}"} in radio[section]["anyOf"], section
