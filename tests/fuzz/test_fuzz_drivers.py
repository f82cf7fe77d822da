"""Quick fuzzing of the serial side: the RAK3172 and ES920LR parsers (bytes through ``feed`` via a fake link) and
the LineSplitter under them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import rak3172
from tests.fuzz.known import run_or_known
from tests.fuzz.quick import examples, mutated_inputs_test, valid_inputs_test
from tests.fuzz.targets import ACCEPTED, IGNORED, TARGETS, Violation, rejected, run_one

FAST = examples(300)
SOME = 100  # valid inputs per target

rak = TARGETS["rak3172"]
es = TARGETS["es920lr"]
splitter = TARGETS["splitter"]

#: The splitter's oracle is a reference model of line splitting; the drivers' that every RX line or frame is
#: delivered once, with its RSSI, SNR and payload, or reported.
test_mutated_inputs = mutated_inputs_test("rak3172", "es920lr", "modbus", "meshtastic", "splitter",
                                          count=FAST.max_examples)
test_valid_inputs_are_delivered = valid_inputs_test("rak3172", "es920lr", "modbus", "meshtastic", count=SOME)

chunks = st.lists(st.binary(max_size=48), min_size=1, max_size=6).map(tuple)


# -- RAK3172 ---------------------------------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(("running", "pending", "syncing")), chunks)
def test_rak3172_arbitrary_bytes(variant: str, data: tuple[bytes, ...]) -> None:
    run_or_known(rak, (variant, data))


@pytest.mark.parametrize(("line", "outcome"), [
    (b"+EVT:RXP2P:-60:5:0A0B\r\n", ACCEPTED),
    (b"+EVT:RXP2P:-60:5:0A0\r\n", rejected("bad_hex")),
    (b"+EVT:RXP2P:x:5:0A0B\r\n", rejected("garbled_line")),
    (b"+EVT:RXP2P RECEIVE ERROR\r\n", rejected("crc_error")),
    (b"OK\r\n", IGNORED),
])
def test_rak3172_outcomes_of_single_lines(line: bytes, outcome: object) -> None:
    assert run_one(rak, ("running", (line,))) == outcome


def test_rak3172_oracle_catches_a_silently_dropped_rx_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rak3172.Rak3172, "_rx_event", lambda self, line, uplinks, received_us: None)
    with pytest.raises(Violation, match="RX lines gave 0 uplinks"):
        run_one(rak, ("running", (b"+EVT:RXP2P:-60:5:0A0B\r\n",)))


# -- ES920LR ---------------------------------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(("boot", "ascii_hex", "ascii_raw", "binary", "config")), chunks)
def test_es920lr_arbitrary_bytes(variant: str, data: tuple[bytes, ...]) -> None:
    run_or_known(es, (variant, data))


@pytest.mark.parametrize(("variant", "stream", "outcome"), [
    ("ascii_hex", b"FFB5BEEF00020A0B\r\n", ACCEPTED),
    ("ascii_hex", b"FFB5BEEF00020A0\r\n", rejected("bad_hex")),
    ("ascii_raw", b"FFB5BEEF0002\x01\x02\r\n", ACCEPTED),
    ("binary", b"\x0eFFB5BEEF0002\x01\x02", ACCEPTED),
    ("ascii_hex", b"hello\r\n", rejected("garbled_line")),
    ("ascii_hex", b"NG 102\r\n", IGNORED),
])
def test_es920lr_outcomes(variant: str, stream: bytes, outcome: object) -> None:
    assert run_one(es, (variant, (stream,))) == outcome


# -- LineSplitter ----------------------------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(("rui3", "es920")), st.integers(1, 8),
       st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"x", b"\r")), min_size=1, max_size=8).map(tuple))
def test_splitter_arbitrary_chunks(profile: str, max_line: int, data: tuple[bytes, ...]) -> None:
    run_or_known(splitter, (profile, max_line, data))


def test_splitter_oracle_counts_long_lines() -> None:
    assert run_one(splitter, ("rui3", 2, (b"AB\rABC\rA",))) == rejected("line_overflow")
    assert run_one(splitter, ("rui3", 3, (b"AB\rABC\rA",))) == ACCEPTED
