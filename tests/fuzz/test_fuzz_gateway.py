"""Quick fuzzing of the gateway's decode path: ``FrameDecoder.decode`` on arbitrary uplinks, with the example
configs' nodes, keys and policies; every reading it accepts must also pass the bridge's serializer."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.gateway.reading import NodeState
from drivers.codec import frame as nodeframe
from drivers.types import Uplink
from tests.fuzz.known import run_or_known
from tests.fuzz.quick import examples, mutated_inputs_test, valid_inputs_test
from tests.fuzz.targets import ACCEPTED, T0_US, TARGETS, Violation, rejected, run_one, valid_frame

FAST = examples(250)
SOME = 80  # valid inputs per target

readings = TARGETS["readings"]

test_decode_mutated_uplinks = mutated_inputs_test("readings", count=FAST.max_examples)
test_decode_accepts_frames_the_configured_nodes_send = valid_inputs_test("readings", count=SOME)


@FAST
@given(st.integers(0, 2), st.lists(st.tuples(st.sampled_from(("lora0", "lora1", "es0", "")), st.binary(max_size=40)),
                                   min_size=1, max_size=3))
def test_decode_arbitrary_payloads(config: int, ups: list[tuple[str, bytes]]) -> None:
    run_or_known(readings, (config, tuple(Uplink(radio, payload, -80, 3.5, None, T0_US + i)
                                          for i, (radio, payload) in enumerate(ups))))


def _sos_uplink(counter: int) -> Uplink:
    key = bytes.fromhex("00000101000001010000010100000101")  # config/demo.yaml node 00000101 (sos)
    return Uplink("lora0", valid_frame(random.Random(counter), node_id=0x101, counter=counter, kind="sos", key=key),
                  -70, 5.0, None, T0_US + counter)


def test_a_replayed_frame_is_quarantined_as_duplicate() -> None:
    assert run_one(readings, (0, (_sos_uplink(5), _sos_uplink(5)))) == rejected("duplicate")
    assert run_one(readings, (0, (_sos_uplink(5), _sos_uplink(6)))) == ACCEPTED


def test_the_oracle_catches_a_decoder_without_replay_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # A decoder that forgets its window (last_fcnt never stored) accepts the replay; the oracle must notice.
    monkeypatch.setattr(NodeState, "__setattr__", lambda self, name, value: object.__setattr__(
        self, name, None if name == "last_fcnt" else value))
    with pytest.raises(Violation, match="accepted after"):
        run_one(readings, (0, (_sos_uplink(5), _sos_uplink(5))))


def test_a_forged_mic_is_quarantined() -> None:
    up = _sos_uplink(9)
    forged = up.payload[:-4] + nodeframe.compute_mic(b"\x00" * 16, nodeframe.parse(up.payload).signed)
    assert run_one(readings, (0, (Uplink("lora0", forged, -70, 5.0, None, T0_US),))) == rejected("bad_mic")
