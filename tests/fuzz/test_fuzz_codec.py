"""Quick fuzzing of the payload codecs (Cayenne LPP, the denen frame, kinds), a few hundred inputs each.

The generators and oracles are those of the dedicated run (:mod:`tests.fuzz.targets`); hypothesis drives the
random choices, so a failure is shrunk and replayed from hypothesis' database.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codec import frame as nodeframe
from drivers.codec import lpp
from tests.fuzz.known import run_or_known
from tests.fuzz.quick import examples, mutated_inputs_test, valid_inputs_test
from tests.fuzz.targets import FRAME_KEYS, TARGETS, Violation, rejected, run_one

FAST = examples(300)
SOME = 100  # valid inputs per target

lpp_target = TARGETS["lpp"]
frame_target = TARGETS["frame"]
kinds_target = TARGETS["kinds"]

test_mutated_inputs = mutated_inputs_test("lpp", "frame", "kinds", count=FAST.max_examples)
test_valid_inputs_are_accepted = valid_inputs_test("lpp", "frame", "kinds", count=SOME)


# -- Cayenne LPP -----------------------------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=64))
def test_lpp_arbitrary_bytes(data: bytes) -> None:
    run_or_known(lpp_target, data)


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x01", "lpp_truncated"),  # half a header
    (b"\x01\x67\x01", "lpp_truncated"),  # temperature needs 2 data bytes
    (b"\x01\x09\x00", "lpp_unknown_type"),
])
def test_lpp_rejections_carry_their_documented_reason(data: bytes, reason: str) -> None:
    assert run_one(lpp_target, data) == rejected(reason)


def test_lpp_oracle_catches_a_decoder_that_loses_a_record(monkeypatch: pytest.MonkeyPatch) -> None:
    real = lpp.decode
    monkeypatch.setattr(lpp, "decode", lambda data: real(data)[:-1])
    with pytest.raises(Violation, match="not inverse"):
        run_one(lpp_target, b"\x01\x67\x01\x10\x02\x68\x50")


def test_lpp_oracle_checks_the_records_kept_before_an_unknown_type(monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"\x01\x00\x01" + b"\x06\x87\x0a\x14\x1e" + b"\x02\xf1\x00"  # digital in, colour, then type 0xF1
    assert run_one(lpp_target, body) == rejected("lpp_unknown_type")
    real = lpp.decode

    def forgetful(data: bytes) -> list[lpp.LppRecord]:
        try:
            return real(data)
        except lpp.LppUnknownType as exc:
            exc.records = exc.records[:-1]
            raise

    monkeypatch.setattr(lpp, "decode", forgetful)
    with pytest.raises(Violation, match="records kept before an unknown type"):
        run_one(lpp_target, body)
    with pytest.raises(Violation, match="records kept before an unknown type"):
        run_one(kinds_target, (0x01, body))


# -- the denen frame -------------------------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=40))
def test_frame_arbitrary_bytes(data: bytes) -> None:
    run_or_known(frame_target, data)


def test_frame_with_a_flipped_mic_bit_is_not_accepted() -> None:
    frame = bytearray(nodeframe.build(0x101, 7, 0x02, b"\x01\x00\x01", key=FRAME_KEYS[0]))
    frame[-1] ^= 1
    assert run_one(frame_target, bytes(frame)) == rejected("mic_mismatch")


def test_frame_oracle_catches_a_misread_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    real = nodeframe.parse

    def off_by_one(data: bytes) -> nodeframe.NodeFrame:
        f = real(data)
        return nodeframe.NodeFrame(f.version, f.flags, f.node_id, f.counter + 1, f.kind, f.body, f.mic, f.signed)

    monkeypatch.setattr(nodeframe, "parse", off_by_one)
    with pytest.raises(Violation, match="header fields misread"):
        run_one(frame_target, nodeframe.build(0x101, 7, 0x02, b""))


# -- kinds -----------------------------------------------------------------------------------------------------------


@FAST
@given(st.integers(0, 255), st.binary(max_size=48))
def test_kinds_arbitrary_code_and_body(code: int, body: bytes) -> None:
    run_or_known(kinds_target, (code, body))


@pytest.mark.parametrize(("data", "reason"), [
    ((0x40, b""), "kind_unknown"),
    ((0x80, b""), "kind_vendor_codec"),
    ((0x02, b"\x03\x74\x01\x40"), "kind_missing_channel"),  # trap without ch1
    ((0x02, b"\x01\x67\x00\x01"), "kind_bad_type"),  # trap ch1 must be digital_input
    ((0x0F, b"\x03\x74\x01\x40\x03\x74\x01\x40"), "kind_duplicate_channel"),
])
def test_kinds_rejections_carry_their_documented_reason(data: tuple[int, bytes], reason: str) -> None:
    assert run_one(kinds_target, data) == rejected(reason)
