"""denen node frame v1 (docs/protocols.md §9): byte-for-byte examples, CMAC, structure errors, properties."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.codec import frame
from drivers.codec.frame import FLAG_DOWNLINK, FLAG_MIC, FLAG_RECEIPT, NodeFrame
from drivers.errors import CodecError, FrameError

FAST = settings(max_examples=60, deadline=None)

EXAMPLE_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
TRAP_BODY = bytes.fromhex("0100010374014A")
TRAP_PLAIN = bytes.fromhex("1000A1B2C30000002A020100010374014A")
TRAP_SIGNED = bytes.fromhex("1100A1B2C30000002A020100010374014AF0CE538F")


# --- §9 worked examples -------------------------------------------------------------------------------------------


def test_build_trap_example_without_mic() -> None:
    assert frame.build(0x00A1B2C3, 42, 0x02, TRAP_BODY) == TRAP_PLAIN


def test_build_trap_example_with_mic() -> None:
    assert frame.build(0x00A1B2C3, 42, 0x02, TRAP_BODY, key=EXAMPLE_KEY) == TRAP_SIGNED


def test_parse_trap_example_without_mic() -> None:
    parsed = frame.parse(TRAP_PLAIN)
    assert (parsed.version, parsed.flags, parsed.node_id, parsed.counter, parsed.kind) == (1, 0, 0xA1B2C3, 42, 2)
    assert parsed.body == TRAP_BODY and parsed.mic is None and parsed.signed == TRAP_PLAIN
    assert not parsed.has_mic and not parsed.receipt_requested and not parsed.downlink
    assert parsed.node_hex == "00a1b2c3"


def test_parse_and_verify_trap_example_with_mic() -> None:
    parsed = frame.parse(TRAP_SIGNED)
    assert parsed.flags == FLAG_MIC and parsed.has_mic
    assert parsed.body == TRAP_BODY
    assert parsed.mic == bytes.fromhex("F0CE538F")
    assert parsed.signed == TRAP_SIGNED[:-4]
    assert frame.compute_mic(EXAMPLE_KEY, parsed.signed) == bytes.fromhex("F0CE538F")
    assert frame.verify(parsed, EXAMPLE_KEY)


def test_verify_rejects_wrong_key_and_tampering() -> None:
    assert not frame.verify(frame.parse(TRAP_SIGNED), bytes(16))
    for index in range(len(TRAP_SIGNED)):
        tampered = bytearray(TRAP_SIGNED)
        tampered[index] ^= 0x01
        try:
            parsed = frame.parse(bytes(tampered))
        except FrameError:
            continue  # a flipped version/flag bit can make the frame structurally invalid; that is also a rejection
        assert not frame.verify(parsed, EXAMPLE_KEY), f"flip in byte {index} went unnoticed"


def test_verify_frame_without_mic_is_false() -> None:
    assert frame.verify(frame.parse(TRAP_PLAIN), EXAMPLE_KEY) is False


# --- AES-CMAC against RFC 4493 §4 (key 2b7e1516...) ---------------------------------------------------------------

RFC4493_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_BLOCKS = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)


@pytest.mark.parametrize(
    ("length", "tag"),
    [
        (0, "bb1d6929e95937287fa37d129b756746"),
        (16, "070a16b46b4d4144f79bdd9dd04a287c"),
        (40, "dfa66747de9ae63030ca32611497c827"),
        (64, "51f0bebf7e3b9d92fc49741779363cfe"),
    ],
)
def test_cmac_matches_rfc4493(length: int, tag: str) -> None:
    # The MIC is the first 4 bytes of the full tag.
    assert frame.compute_mic(RFC4493_KEY, RFC4493_BLOCKS[:length]) == bytes.fromhex(tag)[:4]


def test_cmac_cache_gives_independent_results_per_key_and_call() -> None:
    # The per-key template must never be updated itself: repeated and interleaved calls give the same answers.
    first = frame.compute_mic(RFC4493_KEY, RFC4493_BLOCKS[:16])
    assert frame.compute_mic(EXAMPLE_KEY, TRAP_SIGNED[:-4]) == bytes.fromhex("F0CE538F")
    assert frame.compute_mic(RFC4493_KEY, RFC4493_BLOCKS[:16]) == first
    assert frame.compute_mic(bytearray(RFC4493_KEY), memoryview(RFC4493_BLOCKS[:16])) == first


# --- keys never leak ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_key", [bytes.fromhex("a5c3e1f09b7d2468ace0"), bytes.fromhex("a5c3e1f09b7d2468") * 3, "k" * 16, 12345]
)
def test_bad_key_rejected_without_leaking_it(bad_key: object) -> None:
    for call in (
        lambda: frame.compute_mic(bad_key, b"x"),  # type: ignore[arg-type]
        lambda: frame.build(1, 1, 1, key=bad_key),  # type: ignore[arg-type]
        lambda: frame.verify(frame.parse(TRAP_SIGNED), bad_key),  # type: ignore[arg-type]
    ):
        with pytest.raises(FrameError) as info:
            call()
        assert info.value.reason == "frame_bad_key"
        text = str(info.value) + repr(info.value)
        if isinstance(bad_key, bytes):
            assert bad_key.hex() not in text.lower() and repr(bad_key) not in text
            assert bad_key[:8].hex() not in text.lower()
        else:
            assert str(bad_key) not in text


def test_frame_repr_holds_no_key_material() -> None:
    parsed = frame.parse(TRAP_SIGNED)
    text = repr(parsed)
    assert EXAMPLE_KEY.hex() not in text and repr(EXAMPLE_KEY) not in text
    assert "signed=" not in text  # the covered bytes are derivable; kept out of log lines


# --- flags, receipts ----------------------------------------------------------------------------------------------


def test_flags_combinations() -> None:
    data = frame.build(7, 9, 0x01, b"", key=EXAMPLE_KEY, receipt=True)
    assert data[0] == 0x10 | FLAG_MIC | FLAG_RECEIPT
    parsed = frame.parse(data)
    assert parsed.receipt_requested and parsed.has_mic and not parsed.downlink
    assert frame.build(7, 9, 0x01, downlink=True)[0] == 0x10 | FLAG_DOWNLINK


def test_receipt_without_key() -> None:
    data = frame.build_receipt(0x00A1B2C3, 42)
    assert data == bytes.fromhex("1400A1B2C30000002A7F")
    parsed = frame.parse(data)
    assert parsed.downlink and not parsed.has_mic and parsed.kind == 0x7F and parsed.body == b""


def test_receipt_with_key() -> None:
    data = frame.build_receipt(0x00A1B2C3, 42, EXAMPLE_KEY)
    assert data[:10] == bytes.fromhex("1500A1B2C30000002A7F") and len(data) == 14
    parsed = frame.parse(data)
    assert parsed.downlink and parsed.has_mic and parsed.counter == 42 and parsed.body == b""
    assert frame.verify(parsed, EXAMPLE_KEY)


# --- structural errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(10))
def test_short_frame(length: int) -> None:
    with pytest.raises(FrameError) as info:
        frame.parse(TRAP_PLAIN[:length])
    assert info.value.reason == "frame_short"
    assert f"{length} bytes" in str(info.value)


@pytest.mark.parametrize("length", range(10, 14))
def test_short_frame_with_mic_flag(length: int) -> None:
    with pytest.raises(FrameError) as info:
        frame.parse(TRAP_SIGNED[:length])
    assert info.value.reason == "frame_short"
    assert f"{length} bytes" in str(info.value) and "14" in str(info.value)


def test_mic_only_frame_has_empty_body() -> None:
    parsed = frame.parse(TRAP_SIGNED[:10] + bytes(4))
    assert parsed.body == b"" and parsed.mic == bytes(4)


@pytest.mark.parametrize("first", [0x00, 0x20, 0x21, 0xF0, 0x0F])
def test_wrong_version(first: int) -> None:
    with pytest.raises(FrameError) as info:
        frame.parse(bytes([first]) + TRAP_PLAIN[1:])
    assert info.value.reason == "frame_version"
    assert str(first >> 4) in str(info.value)


@pytest.mark.parametrize("first", [0x18, 0x19, 0x1F])
def test_reserved_flag(first: int) -> None:
    with pytest.raises(FrameError) as info:
        frame.parse(bytes([first]) + TRAP_SIGNED[1:])
    assert info.value.reason == "frame_reserved_flag"


@pytest.mark.parametrize(
    ("args", "field_name"),
    [
        ((-1, 0, 1), "node_id"),
        ((2**32, 0, 1), "node_id"),
        ((0, 2**32, 1), "counter"),
        ((0, -1, 1), "counter"),
        ((0, 0, 256), "kind"),
        ((0, 0, True), "kind"),
        (("1", 0, 1), "node_id"),
    ],
)
def test_build_rejects_out_of_range_fields(args: tuple, field_name: str) -> None:
    with pytest.raises(FrameError) as info:
        frame.build(*args)
    assert info.value.reason == "frame_bad_field" and field_name in str(info.value)


def test_node_frame_is_immutable() -> None:
    parsed = frame.parse(TRAP_PLAIN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.counter = 43  # type: ignore[misc]


def test_parse_copies_mutable_input() -> None:
    buffer = bytearray(TRAP_PLAIN)
    parsed = frame.parse(buffer)
    buffer[10] = 0xEE
    assert parsed.body == TRAP_BODY and isinstance(parsed.body, bytes)


# --- properties ---------------------------------------------------------------------------------------------------

_uint32 = st.integers(0, 2**32 - 1)


@FAST
@given(
    node_id=_uint32,
    counter=_uint32,
    kind=st.integers(0, 255),
    body=st.binary(max_size=60),
    key=st.none() | st.binary(min_size=16, max_size=16),
    receipt=st.booleans(),
    downlink=st.booleans(),
)
def test_build_parse_round_trip(
    node_id: int, counter: int, kind: int, body: bytes, key: bytes | None, receipt: bool, downlink: bool
) -> None:
    data = frame.build(node_id, counter, kind, body, key=key, receipt=receipt, downlink=downlink)
    assert len(data) == 10 + len(body) + (4 if key else 0)
    parsed = frame.parse(data)
    assert (parsed.node_id, parsed.counter, parsed.kind, parsed.body) == (node_id, counter, kind, body)
    assert (parsed.has_mic, parsed.receipt_requested, parsed.downlink) == (key is not None, receipt, downlink)
    assert parsed.node_hex == f"{node_id:08x}" and len(parsed.node_hex) == 8
    if key is not None:
        assert frame.verify(parsed, key)
        assert not frame.verify(parsed, bytes(b ^ 0xFF for b in key))


@FAST
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_frame_error(data: bytes) -> None:
    try:
        parsed = frame.parse(data)
    except FrameError as exc:
        assert exc.reason in {"frame_short", "frame_version", "frame_reserved_flag"}
        assert isinstance(exc, CodecError)
    else:
        assert isinstance(parsed, NodeFrame)
        assert parsed.signed + (parsed.mic or b"") == data
        assert parsed.signed[10:] == parsed.body


# --- split and mic_checker: the gateway's hot path gives what parse and verify give ---------------------------------


def _parse_outcome(data: bytes) -> tuple:
    try:
        f = frame.parse(data)
    except FrameError as exc:
        return ("error", exc.reason, str(exc))
    return ("frame", f.flags, f.node_id, f.counter, f.kind, f.body, f.mic, f.signed)


def _split_outcome(data: bytes) -> tuple:
    try:
        return ("frame", *frame.split(data))
    except FrameError as exc:
        return ("error", exc.reason, str(exc))


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=10, max_size=40).map(lambda b: bytes([0x10 | b[0] & 0x0F]) + b[1:]),  # version 1, any flags
))
def test_split_gives_the_fields_and_errors_of_parse(data: bytes) -> None:
    assert _split_outcome(data) == _parse_outcome(data)
    assert _split_outcome(bytearray(data)) == _parse_outcome(data)
    assert _split_outcome(memoryview(data)) == _parse_outcome(data)


@FAST
@given(key=st.binary(min_size=16, max_size=16), other=st.binary(min_size=16, max_size=16),
       body=st.binary(max_size=40), flip=st.integers(0, 400))
def test_mic_checker_agrees_with_verify(key: bytes, other: bytes, body: bytes, flip: int) -> None:
    signed = frame.build(7, 1, 2, body, key=key)
    check = frame.mic_checker(key)
    for data in (signed, signed[:-4] + bytes(4), frame.build(7, 1, 2, body, key=other),
                 bytes(b ^ (1 if i == flip % len(signed) else 0) for i, b in enumerate(signed))):
        f = frame.parse(data)
        assert check(f.signed, f.mic) is frame.verify(f, key)
        assert check(f.signed, f.mic) is frame.verify(f, key)  # the prepared context is copied, never used up
    assert check(signed, None) is False  # a frame without MIC does not verify


@pytest.mark.parametrize("bad_key", [b"", b"\x00" * 15, b"\x00" * 17, "0" * 16, None, 1234])
def test_mic_checker_rejects_a_bad_key_without_leaking_it(bad_key: object) -> None:
    with pytest.raises(FrameError) as exc_info:
        frame.mic_checker(bad_key)  # type: ignore[arg-type]
    assert exc_info.value.reason == "frame_bad_key"
    if isinstance(bad_key, bytes) and bad_key:
        assert bad_key.hex() not in str(exc_info.value)


# --- the per-key CMAC cache ---------------------------------------------------------------------------------------


def test_a_checker_outlives_its_key_leaving_the_cache() -> None:
    # The cache holds 1024 keyed contexts; a checker made before its key is evicted keeps its own context alive.
    check = frame.mic_checker(EXAMPLE_KEY)
    parsed = frame.parse(TRAP_SIGNED)
    for i in range(1100):
        frame.compute_mic(i.to_bytes(16, "big"), b"evict")
    assert check(parsed.signed, parsed.mic)
    assert not check(parsed.signed, bytes(4))
    assert frame.compute_mic(EXAMPLE_KEY, parsed.signed) == bytes.fromhex("F0CE538F")  # rebuilt after eviction


def test_mic_checker_takes_the_split_output_of_every_frame_size() -> None:
    # split() hands the checker `signed` as bytes at every body length a module can carry (up to 255 bytes).
    check = frame.mic_checker(EXAMPLE_KEY)
    for size in range(0, 242):
        data = frame.build(0xA1B2C3, size, 2, bytes(range(size)), key=EXAMPLE_KEY)
        *_, mic, signed = frame.split(data)
        assert check(signed, mic) and frame.compute_mic(EXAMPLE_KEY, signed) == mic
