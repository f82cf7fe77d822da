"""Uplink: plain, immutable data with dataclass semantics (its __init__ is hand-written for speed)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from drivers.types import Uplink


def test_fields_positional_and_by_keyword() -> None:
    a = Uplink("lora0", b"\x01\x02", -97, 6.5, None, 1_764_000_000_000_000)
    b = Uplink(radio="lora0", payload=b"\x01\x02", rssi=-97, snr=6.5, src=None, received_us=1_764_000_000_000_000)
    assert a == b and hash(a) == hash(b)
    assert (a.radio, a.payload, a.rssi, a.snr, a.src, a.received_us) == ("lora0", b"\x01\x02", -97, 6.5, None,
                                                                          1_764_000_000_000_000)
    assert repr(a) == ("Uplink(radio='lora0', payload=b'\\x01\\x02', rssi=-97, snr=6.5, src=None, "
                       "received_us=1764000000000000)")
    assert a != dataclasses.replace(a, rssi=-96)


def test_it_is_frozen_and_has_no_dict() -> None:
    up = Uplink("es0", b"x", None, None, "0001", 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        up.rssi = 3  # type: ignore[misc]
    assert not hasattr(up, "__dict__")


def test_missing_or_extra_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError):
        Uplink("lora0", b"x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Uplink("lora0", b"x", 1, 2.0, None, 5, 6)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Uplink("lora0", b"x", 1, 2.0, None, received=5)  # type: ignore[call-arg]


def test_copies_and_pickles() -> None:
    up = Uplink("lora0", b"\xff", -1, 0.25, None, 7)
    assert copy.copy(up) == up and copy.deepcopy(up) == up
    assert pickle.loads(pickle.dumps(up)) == up
    assert dataclasses.asdict(up) == {"radio": "lora0", "payload": b"\xff", "rssi": -1, "snr": 0.25, "src": None,
                                      "received_us": 7}
