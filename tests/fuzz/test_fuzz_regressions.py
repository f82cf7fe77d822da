"""Minimal reproducers of the bugs the fuzzer found, one per bug, written against the public API.

A new bug gets a test here marked ``xfail(strict=True)`` (the reason says where the bug is and what the fuzzer fed
it) and an entry in :mod:`tests.fuzz.known`; the fix makes it pass, strict turns that into a failure, and then the
mark and the entry come off and the test stays as a regression test. The comment above each test keeps what was
found.
"""

from __future__ import annotations

import json
import math
import signal

import pytest

from agent.bridge.config import parse_bridge_config
from agent.bridge.lineproto import Serializer
from agent.config import parse_config
from agent.errors import ConfigError
from drivers.es920lr import Es920lr
from drivers.rak3172 import Rak3172
from drivers.transport import LineSplitter
from tests.fuzz.known import KNOWN
from tests.fuzz.targets import T0_US, FakeLink
from tests.support.radio import ES920, P2P, radio_config

GW = "gw-fuzz-01"


def _known(test: str) -> str:
    return KNOWN[f"tests/fuzz/test_fuzz_regressions.py::{test}"]


# -- drivers/transport.py: LineSplitter -----------------------------------------------------------------------------


# Found by the fuzzer, fixed in 1096db2: drivers/transport.py LineSplitter.feed: with terminators (b'\r\n',) a tail
# ending in the CR of a CR LF is measured with that CR and thrown away when it overflows, so the LF that follows in
# the next read no longer ends the line: a line of exactly max_line bytes is reported as overflowing, and the line
# after an overflowing one is discarded with it (fuzz target 'splitter')
@pytest.mark.parametrize(("reads", "lines"), [
    ((b"ABCD\r", b"\n"), [b"ABCD"]),  # a line of exactly max_line bytes
    ((b"TOOLONG\r", b"\nOK\r\n"), [b"OK"]),  # the line after an overflowing one
])
def test_line_splitter_keeps_lines_when_cr_lf_is_split_after_a_full_line(reads: tuple[bytes, ...],
                                                                          lines: list[bytes]) -> None:
    splitter = LineSplitter((b"\r\n",), max_line=4, skip_empty=False)
    got = [line for chunk in reads for line in splitter.feed(chunk)]
    assert got == lines


# Found by the fuzzer, fixed in 1096db2: drivers/transport.py LineSplitter.feed (max_line 1024 in drivers/es920lr.py):
# 1100 noise bytes ending in CR, then LF and a received frame in the next read: the frame is discarded as the end of
# the noise line
def test_es920lr_keeps_the_frame_after_overlong_noise_whose_cr_lf_is_split() -> None:
    link = FakeLink("lora1")
    driver = Es920lr(radio_config("lora1", "es920lr", es920=ES920), link)
    driver._enter_operation()  # what configure() leaves behind
    driver.feed(b"\xaa" * 1100 + b"\r", T0_US)
    driver.feed(b"\nFFB5BEEF00020A0B\r\n", T0_US + 1)
    assert [u.payload for u in link.uplinks] == [b"\x0a\x0b"]


# -- drivers/rak3172.py ---------------------------------------------------------------------------------------------


# Found by the fuzzer, fixed in 1096db2: drivers/rak3172.py Rak3172._rx_event: snr = float(parts[3]) accepts 'nan',
# 'inf' and '1e999'; the uplink carries a non-finite SNR, the gateway's reading JSON then holds NaN (not JSON) and the
# bridge dead-letters the reading as not_finite (fuzz target 'rak3172', input '+EVT:RXP2P:-60:nan:<hex>')
@pytest.mark.parametrize("snr", [b"nan", b"inf", b"-inf", b"1e999"])
def test_rak3172_never_delivers_a_non_finite_snr(snr: bytes) -> None:
    link = FakeLink("lora0")
    Rak3172(radio_config("lora0", "rak3172", p2p=P2P), link).feed(b"+EVT:RXP2P:-60:" + snr + b":0A0B\r\n", T0_US)
    assert all(u.snr is None or math.isfinite(u.snr) for u in link.uplinks)
    assert link.uplinks or link.incidents  # delivered without the SNR, or reported as garbled: never silence


# -- agent/bridge/lineproto.py ----------------------------------------------------------------------------------------


def _reading(fcnt: int, **changes: object) -> dict[str, object]:
    r: dict[str, object] = {
        "id": f"{GW}/00000101/{fcnt}", "node": "00000101", "name": "sos-1", "fcnt": fcnt, "kind": "sos", "lane": "sos",
        "ts_us": T0_US + fcnt, "clock": "synced", "radio": "lora0", "rssi": -90, "snr": 5.5, "auth": "mic",
        "receipt": False, "values": {"pressed": 1.0},
    }
    r.update(changes)
    return r


def _batch(*readings: dict[str, object], **changes: object) -> bytes:
    doc = {"schema": "denen.readings/1", "gateway": GW, "site": "testville", "lane": "sos", "sent_us": T0_US,
           "readings": list(readings)}
    doc.update(changes)
    return json.dumps(doc).encode()


# Found by the fuzzer, fixed in 1096db2: agent/bridge/lineproto.py Serializer._reading: math.isfinite(rssi/snr) (line
# ~326) and float(value) (line ~344) raise OverflowError for a JSON integer beyond the float range; convert() promises
# never to raise, and the bridge then dead-letters the whole batch as internal_error instead of only the bad reading
@pytest.mark.parametrize("change", [{"rssi": 10**400}, {"snr": -(10**400)}, {"values": {"pressed": 10**400}}])
def test_serializer_refuses_integers_beyond_the_float_range(change: dict[str, object]) -> None:
    conv = Serializer().convert(f"denen/v1/{GW}/readings/sos", _batch(_reading(1), _reading(2, **change)))
    assert conv.readings == 1
    assert [(r.kind, r.reading_id) for r in conv.rejects] == [("reading", f"{GW}/00000101/2")]
    assert conv.rejects[0].reason in ("invalid_reading", "not_finite")


# Found by the fuzzer, fixed in 1096db2: agent/bridge/lineproto.py: 'x not in LANES' / 'kind not in KINDS'
# (frozensets, lines ~268, ~299, ~308) raise TypeError: unhashable type when the JSON value is a list or an object;
# convert() promises never to raise
@pytest.mark.parametrize(("payload", "kind"), [
    (_batch(_reading(1), lane=["sos"]), "payload"),
    (_batch(_reading(1, kind={"sos": 1})), "reading"),
    (_batch(_reading(1, lane=[])), "reading"),
])
def test_serializer_refuses_unhashable_lane_or_kind(payload: bytes, kind: str) -> None:
    conv = Serializer().convert(f"denen/v1/{GW}/readings/sos", payload)
    assert [r.kind for r in conv.rejects] == [kind] and not conv.lines
    assert conv.rejects[0].reason in ("invalid_schema", "invalid_reading")


# Found by the fuzzer, fixed in 1096db2: agent/bridge/lineproto.py escape_string_field keeps CR and LF: a status
# 'agent' or an alert 'message' with a line break splits the line protocol line (InfluxDB: 'line protocol does not
# support the newline character in tag or field values'); Converted.lines are documented as 'without newlines'
@pytest.mark.parametrize("agent", ["0.1\n0", "0.1\r"])
def test_serializer_lines_never_hold_a_line_break(agent: str) -> None:
    doc = {"schema": "denen.status/1", "gateway": GW, "state": "online", "agent": agent, "ts_us": T0_US}
    conv = Serializer().convert(f"denen/v1/{GW}/status", json.dumps(doc).encode())
    assert not any("\n" in line or "\r" in line for line in conv.lines)
    assert conv.lines or conv.rejects


# -- agent/config/: parse_yaml_model (both config loaders) ---------------------------------------------------------


# Found by the fuzzer, fixed in 1096db2: agent/config/ parse_yaml_model: ruamel's ReaderError for a control
# character (DEL, NUL ...) is a YAMLError without a mark, so the ConfigIssue has no line, no column and no key (only
# 'position N' in its text)
@pytest.mark.parametrize("parse", [parse_config, parse_bridge_config])
def test_config_error_for_a_control_character_gives_its_line(parse: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse("sink:\n  type: v1\x7f\n", source="c.yaml")  # type: ignore[operator]
    assert [i.line for i in err.value.issues] == [2]


# Found by the fuzzer, fixed in 1096db2: agent/config/ parse_yaml_model: yaml.compose/yaml.load (line ~1212) let
# ruamel's own exceptions escape instead of a ConfigError: AttributeError ('ScalarNode' object has no attribute
# 'flow_style') for '!!set' on a scalar, TypeError (unhashable CommentedMap) for a complex key '?\n- :', IndexError
# for an empty '!!float' or '!!int', KeyError '' for an empty '!!bool', ValueError for '!!int r', AssertionError (in
# the scanner's comment handling) for '#\n| #'; denen config validate shows a traceback
@pytest.mark.parametrize("text", ["!!set", "?\n- :", "gateway: !!set x\n", "!!float", "a: !!int\n", "a: !!bool\n",
                                  "!!int r", "#\n| #"])
@pytest.mark.parametrize("parse", [parse_config, parse_bridge_config])
def test_odd_yaml_is_a_config_error_not_a_crash(parse: object, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text, source="c.yaml")  # type: ignore[operator]
    assert any(i.line is not None for i in err.value.issues)


# Found by the fuzzer, fixed in 1096db2: agent/config/ RadioConfig._default_section (line ~755):
# SECTION_FOR_DRIVER.get(data.get('driver')) raises TypeError: unhashable type for 'driver: [rak3172]' or a mapping;
# pydantic turns only ValueError and AssertionError into validation errors, so parse_config crashes
@pytest.mark.parametrize("driver", ["[rak3172]", "{rak3172: 1}"])
def test_radio_driver_that_is_a_list_is_a_config_error(driver: str) -> None:
    text = f"gateway:\n  id: gw-1\n  site: s\nradios:\n  - name: lora0\n    driver: {driver}\n    port: /dev/x\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="c.yaml")
    assert any(i.key == "radios[0].driver" and i.line == 6 for i in err.value.issues), err.value.issues


# Found by the fuzzer, fixed in 1096db2: agent/config/ _position (line ~1402): for a key pulled in by a YAML merge
# ('<<: {x: 1}') ruamel's lc.key(part) returns None instead of raising, and found[0] raises TypeError; the docstring
# promises the issue is placed at the closest ancestor instead
@pytest.mark.parametrize(("parse", "text", "key"), [
    (parse_config, "gateway:\n  <<: {x: 1}\n", "gateway.x"),
    (parse_config, "<<: {x: 1}\n", "x"),
    (parse_bridge_config, "<<: {x: 1}\n", "x"),
])
def test_problem_in_a_merged_key_is_a_config_error_not_a_crash(parse: object, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text, source="c.yaml")  # type: ignore[operator]
    assert any(i.key == key for i in err.value.issues), err.value.issues


# Found by the fuzzer, fixed in 1096db2: agent/config/ _check_readable_file (line ~313): Path(path).exists() raises
# OSError [Errno 36] File name too long for a file name over 255 bytes (mqtt.tls.ca_file, password_file ...);
# parse_config crashes instead of saying the file cannot be found
@pytest.mark.parametrize(("parse", "text", "key"), [
    (parse_config, "gateway:\n  id: gw-1\n  site: s\nmqtt:\n  password_file: {}\n", "mqtt.password_file"),
    (parse_bridge_config, "mqtt:\n  tls:\n    ca_file: {}\nsink:\n  type: v1\n  database: d\n", "mqtt.tls.ca_file"),
])
def test_a_file_name_too_long_is_a_config_error(parse: object, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text.format("x" * 300), source="c.yaml")  # type: ignore[operator]
    assert any(i.key == key and i.line is not None for i in err.value.issues), err.value.issues


# Found by the fuzzer, fixed in 1096db2: agent/config/ P2pConfig._japan_band (line ~617): the message formats value
# / 1e6, which raises OverflowError for an integer beyond the float range (a frequency_hz of 310+ digits) instead of
# the 'outside Japan's 920 MHz band' ConfigError
def test_a_frequency_beyond_the_float_range_is_a_config_error() -> None:
    text = ("gateway:\n  id: gw-1\n  site: s\nradios:\n  - name: lora0\n    driver: rak3172\n    port: /dev/x\n"
            "    p2p:\n      frequency_hz: 1" + "0" * 400 + "\n")
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="c.yaml")
    assert any(i.key == "radios[0].p2p.frequency_hz" and i.line == 9 for i in err.value.issues), err.value.issues


class _TooSlow(Exception):
    pass


def _too_slow(signum: int, frame: object) -> None:
    raise _TooSlow("parse_config ran for 2 s")


# Found by the fuzzer, fixed in 1096db2: agent/config/ _to_plain copies the value of every alias (ruamel shares it),
# so nested aliases expand exponentially: this 400-byte config (6 levels of 10 aliases = 10^6 items) takes about 8 s,
# one more level 80 s and gigabytes, before the loader reports it; found as hangs by fuzz target 'config_aliases'
def test_yaml_aliases_do_not_expand_without_bound() -> None:
    anchors = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    text = "gateway:\n  id: gw-1\n  site: s\nradios: []\nextra:\n" + "".join(f"  {a}\n" for a in anchors)
    previous = signal.signal(signal.SIGALRM, _too_slow)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with pytest.raises(ConfigError):
            parse_config(text, source="c.yaml")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_alias_limit_error_points_at_a_line_or_key() -> None:
    anchors = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    text = "gateway:\n  id: gw-1\n  site: s\nradios: []\nextra:\n" + "".join(f"  {a}\n" for a in anchors)
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="c.yaml")
    assert all(i.line is not None or i.key for i in err.value.issues), [str(i) for i in err.value.issues]


def test_every_known_bug_has_a_reproducer_here() -> None:
    names = {key.split("::")[1] for key in KNOWN}
    assert names <= set(globals()), names - set(globals())
    assert all(_known(name) for name in names)
