"""Fuzz targets: each parser of untrusted input, a generator of inputs for it, and an oracle.

A target turns one input into an :class:`Outcome` -- ``accepted``, ``rejected`` (with a reason key) or
``ignored`` (valid protocol traffic that carries no data, e.g. a status line) -- or fails:

* :class:`Violation`: the target broke its contract. It raised its documented error class but with an
  undocumented reason or an empty message, or it accepted something and produced output that is wrong (a decoded
  LPP body that does not re-encode to the same bytes, an uplink whose payload is not in the input, a line protocol
  line InfluxDB cannot parse, a config error that points nowhere ...). ``Target.specific`` says per target what
  a "specific" rejection is.
* any other exception: a crash (not the documented error type for that target).

Inputs are plain values (bytes, str, tuples of them) so that they can be printed, minimised and pasted into a
regression test. Generators are structure-aware: most inputs are valid inputs (frames built with the real
encoder, RX lines as the modules print them, the repository's example configs) with a few edits
(:mod:`tests.fuzz.mutate`); some are valid and unchanged, so the accept path is exercised too; some are random.
"""

from __future__ import annotations

import atexit
import binascii
import copy
import json
import math
import random
import re
import shutil
import struct
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from agent.bridge import lineproto, schema
from agent.bridge.config import parse_bridge_config
from agent.config import Config, parse_config
from agent.errors import ConfigError, ConfigIssue
from agent.gateway.clock import EPOCH_FLOOR_US
from agent.gateway.readings import FrameDecoder
from drivers import es920lr, rak3172
from drivers.codec import frame as nodeframe
from drivers.codec import kinds, lpp
from drivers.errors import CodecError, FrameError, LppError
from drivers.radio import INCIDENT_KINDS
from drivers.transport import DEFAULT_MAX_LINE, LineSplitter
from drivers.types import Uplink
from tests.fuzz.mutate import chunk, mutate_bytes, mutate_text, random_bytes, small
from tests.support.field import example_keys_env
from tests.support.radio import ES920, P2P, radio_config

__all__ = ["TARGETS", "Outcome", "Target", "Violation", "ACCEPTED", "IGNORED", "rejected"]

REPO = Path(__file__).resolve().parents[2]
#: 2026-01-01T00:00:00Z in µs: every generated timestamp is after the 2020 floor, so clock checks never interfere.
T0_US = 1_767_225_600_000_000


class Violation(AssertionError):
    """The target broke its contract: an undocumented or empty error, or wrong output for an accepted input."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a target did with one input: ``accepted``, ``rejected`` (``reason`` says why) or ``ignored``."""

    status: str
    reason: str = ""


ACCEPTED = Outcome("accepted")
IGNORED = Outcome("ignored")


def rejected(reason: str) -> Outcome:
    return Outcome("rejected", reason)


def check(condition: object, message: str) -> None:
    """Raise :class:`Violation` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise Violation(message)


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


class Target:
    """One fuzz target. Subclasses set the class attributes and implement ``generate``/``valid``/``execute``.

    Attributes:
        name: short name used on the command line and in the table.
        error: the documented error type (or "never raises").
        specific: what a specific rejection is for this target, in one sentence.
        weight: share of the inputs of the dedicated run (relative to the other targets).
        unit: inputs per work unit of the dedicated run (about a second of work).
        pool_seed: seed of :attr:`pool`, the valid inputs mutations splice from.
    """

    name = ""
    error = ""
    specific = ""
    weight = 1.0
    unit = 2000
    pool_seed = 0

    def generate(self, rng: random.Random) -> Any:
        """One fuzz input: mostly mutated valid inputs, some valid ones, some random."""
        raise NotImplementedError

    def valid(self, rng: random.Random) -> Any:
        """One valid input that the target must accept."""
        raise NotImplementedError

    def execute(self, data: Any) -> Outcome:
        """Run the target on ``data`` and check its contract. Raises :class:`Violation` or crashes."""
        raise NotImplementedError

    @cached_property
    def pool(self) -> list[Any]:
        """Valid inputs that mutations splice from: 200 of :meth:`valid` from the seed ``pool_seed`` (the same corpus
        on every run)."""
        rng = random.Random(self.pool_seed)
        return [self.valid(rng) for _ in range(200)]

    def _bytes_input(self, rng: random.Random, r: float, *, random_below: float, valid_below: float, random_len: int,
                     tokens: Sequence[bytes], max_len: int) -> bytes:
        """For a target of bytes, by the draw ``r`` in [0, 1): random bytes (up to ``random_len``) below
        ``random_below``, a valid input below ``valid_below``, else a valid input mutated (``tokens`` spliced in, at
        most ``max_len`` bytes)."""
        if r < random_below:
            return random_bytes(rng, random_len)
        if r < valid_below:
            return self.valid(rng)
        return mutate_bytes(rng, self.valid(rng), tokens=tokens, pool=self.pool, max_len=max_len)

    def describe(self, data: Any) -> str:
        """A short printable form of an input (for reports)."""
        return _short(data)

    def prepare(self) -> None:
        """Build what the target caches (corpora, configs, a sandbox directory) before the run forks its workers,
        so that they share it instead of each building its own."""
        self.generate(random.Random(0))


def _check_codec_error(exc: CodecError, cls: type[CodecError], reasons: frozenset[str], where: str) -> str:
    check(isinstance(exc, cls), f"{where} raised {type(exc).__name__}, documented: {cls.__name__}")
    check(isinstance(exc.reason, str) and exc.reason in reasons,
          f"{where}: reason {exc.reason!r} is not one of the documented {sorted(reasons)}")
    check(str(exc).strip(), f"{where}: {exc.reason} with an empty message")
    return exc.reason


# =====================================================================================================================
# Codec: Cayenne LPP, the denen frame, kinds

#: docs/protocols.md §9 kind table, written out again here (not imported from kinds.py) so that generated bodies are
#: checked against the spec: (channel, LPP type name, presence) with presence True required, False optional, None
#: "at least one of these".
KIND_SPEC: dict[str, tuple[tuple[int, str, bool | None], ...]] = {
    "sos": ((1, "digital_input", True), (2, "gps", False), (3, "voltage", False), (4, "accelerometer", False)),
    "trap": ((1, "digital_input", True), (3, "voltage", False)),
    "water_level": ((1, "distance", True), (3, "voltage", False)),
    "rain": ((1, "analog_input", True), (2, "generic_sensor", False), (3, "voltage", False)),
    "tilt": ((1, "analog_input", True), (2, "analog_input", True), (3, "voltage", False)),
    "weather": ((1, "temperature", None), (2, "humidity", None), (4, "barometer", None), (3, "voltage", False)),
    "heartbeat": ((3, "voltage", True), (5, "percentage", False)),
    "receipt": (),
}
READING_KINDS = ("sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat")
LPP_TYPE_IDS = tuple(sorted(lpp.LPP_TYPES))
LPP_TOKENS = tuple(bytes([ch, t]) for t in LPP_TYPE_IDS for ch in (0, 1, 2, 3))
FRAME_TOKENS = (b"\x10", b"\x11", b"\x13", b"\x15", b"\x19", b"\x20", b"\x00\x00\x01\x01", b"\xff\xff\xff\xff",
                b"\x7f", b"\x80", b"\xfe") + LPP_TOKENS[:40]
#: Node keys used by the frame target; frames are signed with one of them (or none).
FRAME_KEYS = (bytes(range(16)), b"\x00\x00\x01\x01" * 4, b"\xff" * 16)


def _record(rng: random.Random, channel: int, type_name: str) -> bytes:
    spec = lpp.lpp_type(type_name)
    return bytes((channel, spec.id)) + rng.randbytes(spec.size)


def lpp_body(rng: random.Random, *, records: int | None = None) -> bytes:
    """A valid LPP body: any type, any channel, any data bytes (every raw value of a type is valid)."""
    n = records if records is not None else rng.randrange(0, 7)
    out = b""
    for _ in range(n):
        channel = rng.randrange(256) if rng.random() < 0.3 else rng.randrange(9)
        if rng.random() < 0.05:  # the one variable-length type: size byte, precision, start point, k steps
            k = rng.randrange(0, 9)
            out += bytes((channel, lpp.POLYLINE_TYPE, 8 + k, rng.choice(sorted(lpp.POLYLINE_PRECISIONS))))
            out += rng.randbytes(6 + k)
            continue
        type_id = rng.choice(LPP_TYPE_IDS)
        out += bytes((channel, type_id)) + rng.randbytes(lpp.LPP_TYPES[type_id].size)
    return out


def kind_body(rng: random.Random, kind: str) -> bytes:
    """A body that a node of ``kind`` sends: the table's channels (required ones always), in any order, maybe an
    extra channel or the RAK device id."""
    spec = KIND_SPEC[kind]
    parts = [_record(rng, ch, t) for ch, t, need in spec if need or (need is False and rng.random() < 0.5)]
    any_of = [(ch, t) for ch, t, need in spec if need is None]
    if any_of:
        chosen = [(ch, t) for ch, t in any_of if rng.random() < 0.6] or [rng.choice(any_of)]
        parts += [_record(rng, ch, t) for ch, t in chosen]
    if rng.random() < 0.15:
        parts.append(_record(rng, 0, "device_id"))
    if rng.random() < 0.15:
        used = {ch for ch, _, _ in spec}
        channel = rng.choice([c for c in range(6, 20) if c not in used])
        parts.append(_record(rng, channel, lpp.LPP_TYPES[rng.choice(LPP_TYPE_IDS[:-1])].name))
    rng.shuffle(parts)
    return b"".join(parts)


def valid_frame(rng: random.Random, *, node_id: int | None = None, counter: int | None = None,
                kind: str | None = None, key: bytes | None | str = "random", receipt: bool | None = None) -> bytes:
    """A frame built with the real encoder: header, a body of the kind, and a MIC under one of FRAME_KEYS."""
    kind = kind or rng.choice(READING_KINDS)
    if key == "random":
        key = rng.choice(FRAME_KEYS) if rng.random() < 0.7 else None
    return nodeframe.build(
        node_id if node_id is not None else rng.choice((0x101, 0x201, rng.getrandbits(32))),
        counter if counter is not None else rng.getrandbits(rng.choice((4, 16, 32))),
        kinds.KIND_CODES[kind], kind_body(rng, kind), key=key,  # type: ignore[arg-type]
        receipt=receipt if receipt is not None else rng.random() < 0.2,
    )


def check_unknown_type(exc: LppError, data: bytes) -> list[lpp.LppRecord]:
    """An unknown type stops the body where its record starts and carries exactly the records before it."""
    check(isinstance(exc, lpp.LppUnknownType), "lpp_unknown_type raised without the records before it")
    assert isinstance(exc, lpp.LppUnknownType)
    offset = exc.offset
    check(0 <= offset < len(data) - 1 and data[offset + 1] not in lpp.LPP_TYPES,
          f"unknown type reported at offset {offset}, where a known record (or nothing) starts")
    check(exc.records == lpp.decode(data[:offset]), "the records kept before an unknown type are not the body before it")
    return exc.records


class LppTarget(Target):
    name = "lpp"
    error = "LppError"
    specific = ("LppError with reason lpp_truncated, lpp_unknown_type or lpp_bad_polyline and a non-empty message; "
                "an accepted body "
                "re-encodes to the same bytes (decode and encode are exact inverses)")
    weight = 14.0
    unit = 4000
    REASONS = frozenset({"lpp_truncated", "lpp_unknown_type", "lpp_bad_polyline"})
    pool_seed = 1

    def valid(self, rng: random.Random) -> bytes:
        return lpp_body(rng)

    def generate(self, rng: random.Random) -> bytes:
        return self._bytes_input(rng, rng.random(), random_below=0.1, valid_below=0.2, random_len=48,
                                 tokens=LPP_TOKENS, max_len=512)

    def execute(self, data: bytes) -> Outcome:
        try:
            records = lpp.decode(data)
        except LppError as exc:
            reason = _check_codec_error(exc, LppError, self.REASONS, "lpp.decode")
            if reason == "lpp_unknown_type":
                check_unknown_type(exc, data)
            return rejected(reason)
        check(records == lpp.decode(bytearray(data)) == lpp.decode(memoryview(data)),
              "bytes, bytearray and memoryview decode differently")
        for r in records:
            check(isinstance(r, lpp.LppRecord) and 0 <= r.channel <= 255
                  and (r.type in lpp.LPP_TYPES or r.type == lpp.POLYLINE_TYPE),
                  f"odd record {r!r}")
        again = lpp.encode([(r.channel, r.type, r.value) for r in records])
        check(again == bytes(data), f"decode/encode are not inverse: {bytes(data).hex()} -> {again.hex()}")
        return ACCEPTED


class FrameTarget(Target):
    name = "frame"
    error = "FrameError"
    specific = ("FrameError with reason frame_short, frame_version or frame_reserved_flag and a non-empty message; "
                "an accepted frame's fields rebuild exactly the input bytes, and verify() is True only for the key "
                "that signed it")
    weight = 12.0
    unit = 4000
    REASONS = frozenset({"frame_short", "frame_version", "frame_reserved_flag"})
    pool_seed = 2

    def valid(self, rng: random.Random) -> bytes:
        return valid_frame(rng)

    def generate(self, rng: random.Random) -> bytes:
        r = rng.random()
        if 0.18 <= r < 0.3:  # header-only edits: every version/flag nibble, short frames
            frame = bytearray(valid_frame(rng))
            frame[0] = rng.randrange(256)
            return bytes(frame[: rng.choice((len(frame), rng.randrange(len(frame) + 1)))])
        return self._bytes_input(rng, r, random_below=0.08, valid_below=0.18, random_len=40, tokens=FRAME_TOKENS,
                                 max_len=300)

    def execute(self, data: bytes) -> Outcome:
        try:
            f = nodeframe.parse(data)
        except FrameError as exc:
            return rejected(_check_codec_error(exc, FrameError, self.REASONS, "frame.parse"))
        raw = bytes(data)
        check(f.version == 1 and raw[0] == (0x10 | f.flags) and not f.flags & 0x8, f"header {raw[:1].hex()} vs {f!r}")
        check((f.node_id, f.counter, f.kind) == struct.unpack_from(">IIB", raw, 1), "header fields misread")
        check(f.signed + (f.mic or b"") == raw, "signed part + MIC is not the frame")
        check(f.body == f.signed[10:], "body is not the bytes after the header")
        check((f.mic is not None) == f.has_mic and (f.mic is None or len(f.mic) == 4), "MIC flag and MIC disagree")
        signed_by = [k for k in FRAME_KEYS if nodeframe.verify(f, k)]
        check(len(signed_by) <= 1, "a MIC verifies under two different keys")
        key = signed_by[0] if signed_by else None
        if f.has_mic and key is None:
            return rejected("mic_mismatch")  # structurally valid; authentication is the gateway's decision
        rebuilt = nodeframe.build(f.node_id, f.counter, f.kind, f.body, key=key, receipt=f.receipt_requested,
                                  downlink=f.downlink)
        check(rebuilt == raw, f"build() of the parsed fields gives {rebuilt.hex()}, not the input")
        return ACCEPTED


class KindsTarget(Target):
    """Byte 9 (kind code) and the LPP body of a frame -> named values, as the gateway decodes them."""

    name = "kinds"
    error = "CodecError"
    specific = ("CodecError (LppError for the body) with a documented reason (kind_*, lpp_*) and a non-empty "
                "message; accepted values are finite floats that encode_values() turns back into the same values")
    weight = 10.0
    unit = 3000
    REASONS = frozenset({"kind_unknown", "kind_vendor_codec", "kind_missing_channel", "kind_bad_type",
                         "kind_duplicate_channel"}) | LppTarget.REASONS

    @cached_property
    def pool(self) -> list[bytes]:
        rng = random.Random(3)
        return [kind_body(rng, rng.choice(READING_KINDS)) for _ in range(200)]

    def valid(self, rng: random.Random) -> tuple[int, bytes]:
        kind = rng.choice((*READING_KINDS, "receipt"))
        return kinds.KIND_CODES[kind], kind_body(rng, kind)

    def generate(self, rng: random.Random) -> tuple[int, bytes]:
        code, body = self.valid(rng)
        r = rng.random()
        if r < 0.1:
            code = rng.randrange(256)
        elif r < 0.2:
            code = kinds.KIND_CODES[rng.choice(READING_KINDS)]  # a body of another kind
        if rng.random() < 0.7:
            body = mutate_bytes(rng, body, tokens=LPP_TOKENS, pool=self.pool, max_len=256)
        return code, body

    def execute(self, data: tuple[int, bytes]) -> Outcome:
        code, body = data
        try:
            name = kinds.kind_name(code)
        except CodecError as exc:
            check(code not in kinds.KINDS and code not in kinds.VENDOR_CODES, f"kind_name({code}) refused a known code")
            return rejected(_check_codec_error(exc, CodecError, frozenset({"kind_unknown"}), "kind_name"))
        try:
            values = kinds.decode_values(name, lpp.decode(body))
        except CodecError as exc:
            reason = _check_codec_error(exc, CodecError, self.REASONS, "decode_values")
            check(reason != "kind_vendor_codec" or name == "vendor", "kind_vendor_codec for a table kind")
            if reason == "lpp_unknown_type":
                kept = kinds.salvage_values(name, check_unknown_type(exc, body))
                check(all(isinstance(k, str) and k and type(v) is float and math.isfinite(v) for k, v in kept.items())
                      and (bool(kept) == bool(exc.records)),  # type: ignore[attr-defined]
                      f"values kept before an unknown type: {kept!r}")
            return rejected(reason)
        check(name != "vendor", "a vendor kind was decoded without its codec")
        for key, value in values.items():
            check(isinstance(key, str) and key and type(value) is float and math.isfinite(value),
                  f"value {key!r}={value!r} is not a finite float")
        try:
            again = kinds.decode_values(name, lpp.decode(kinds.encode_values(name, values)))
        except CodecError as exc:
            raise Violation(f"decoded values cannot be encoded again: {exc.reason}: {exc}") from None
        check(again.keys() == values.keys() and all(math.isclose(again[k], values[k], rel_tol=1e-12, abs_tol=1e-9)
                                                     for k in values),
              f"encode_values/decode_values round trip changed {values} into {again}")
        return ACCEPTED


# =====================================================================================================================
# Gateway: FrameDecoder.decode on uplinks

READINGS_REASONS = frozenset({
    "frame_short", "frame_version", "frame_reserved_flag", "frame_downlink", "unknown_node", "wrong_radio",
    "no_key", "bad_mic", "mic_missing", "duplicate", "replay", "kind_unknown", "kind_vendor_codec",
    "kind_unexpected", "kind_missing_channel", "kind_bad_type", "kind_duplicate_channel", "lpp_truncated",
    "lpp_unknown_type", "lpp_bad_polyline",
})


def _config_text(name: str) -> str:
    return (REPO / "config" / name).read_text(encoding="utf-8")


class ReadingsTarget(Target):
    """A short sequence of uplinks through one FrameDecoder (fresh node state per input)."""

    name = "readings"
    error = "never raises (quarantine record)"
    specific = ("every uplink gives exactly one of entry/quarantine; a quarantine has a documented reason and a "
                "non-empty detail and keeps the payload; an entry is strict JSON for the frame's node and counter, "
                "above every counter accepted before, authenticated as the node's policy demands, and the bridge "
                "serializer turns it into line protocol without a reject")
    weight = 14.0
    unit = 1500

    @cached_property
    def configs(self) -> list[Config]:
        demo = _config_text("demo.yaml")
        river = _config_text("river-station.yaml")
        texts = [demo, river, river.replace("unknown_nodes: quarantine", "unknown_nodes: accept")]
        with example_keys_env():  # the examples name their node keys by environment variable (key_env:)
            return [parse_config(t, source=f"<fuzz {i}>", base_dir=REPO / "config") for i, t in enumerate(texts)]

    @cached_property
    def serializer(self) -> lineproto.Serializer:
        # The bridge's own clock: the gateway stamps readings with the real time, which the bridge checks for
        # stamps from the future.
        return lineproto.Serializer("denen/v1")

    def _uplinks(self, rng: random.Random, ci: int, *, mutate: bool) -> tuple[int, tuple[Uplink, ...]]:
        cfg = self.configs[ci]
        nodes = cfg.nodes
        radios = [r.name for r in cfg.radios]
        counters: dict[int, int] = {}
        out = []
        for i in range(rng.choice((1, 1, 2, 3, 4))):
            node = rng.choice(nodes) if nodes and (not mutate or rng.random() < 0.9) else None
            node_id = node.node_id if node is not None else rng.getrandbits(32)
            kind = node.kind if node is not None and (not mutate or rng.random() < 0.85) else rng.choice(READING_KINDS)
            last = counters.get(node_id)
            counter = rng.getrandbits(rng.choice((8, 20, 31))) if last is None else last + rng.choice((1, 1, 2, 50))
            if mutate and last is not None and rng.random() < 0.1:
                counter = last - rng.choice((0, 1, 1000))  # a replay
            counter &= 0xFFFF_FFFF
            counters[node_id] = max(counter, last or 0)
            key = node.key_bytes() if node is not None else None
            if mutate and rng.random() < 0.1:
                key = rng.choice((None, FRAME_KEYS[0]))
            payload = valid_frame(rng, node_id=node_id, counter=counter, kind=kind, key=key)
            if mutate and rng.random() < 0.35:
                payload = mutate_bytes(rng, payload, tokens=FRAME_TOKENS, max_len=300)
            radio = (node.radio if node is not None and node.radio else rng.choice(radios))
            if mutate and rng.random() < 0.05:
                radio = rng.choice(("lora9", "", "es0", "lora0"))
            rssi = rng.randint(-140, 10) if rng.random() < 0.9 else None
            snr = round(rng.uniform(-20, 15), 2) if rng.random() < 0.8 else None
            out.append(Uplink(radio, payload, rssi, snr, None, T0_US + i * 1000))
        return ci, tuple(out)

    def valid(self, rng: random.Random) -> tuple[int, tuple[Uplink, ...]]:
        return self._uplinks(rng, rng.randrange(len(self.configs)), mutate=False)

    def generate(self, rng: random.Random) -> tuple[int, tuple[Uplink, ...]]:
        return self._uplinks(rng, rng.randrange(len(self.configs)), mutate=rng.random() < 0.85)

    def describe(self, data: tuple[int, tuple[Uplink, ...]]) -> str:
        ci, ups = data
        return _short((ci, [(u.radio, u.payload.hex(), u.rssi, u.snr) for u in ups]), 600)

    def execute(self, data: tuple[int, tuple[Uplink, ...]]) -> Outcome:
        ci, uplinks = data
        cfg = self.configs[ci]
        decoder = FrameDecoder(cfg, {})
        accepted: dict[str, int] = {}
        first_reason = ""
        for up in uplinks:
            d = decoder.decode(up)
            check((d.entry is None) != (d.quarantined is None), "decode gave both or neither of entry/quarantine")
            if d.quarantined is not None:
                q = d.quarantined
                check(q.reason in READINGS_REASONS, f"quarantine reason {q.reason!r} is not documented")
                check(isinstance(q.detail, str) and q.detail.strip(), f"quarantine {q.reason} without a detail")
                check(q.raw == up.payload and q.ts_us == up.received_us, "quarantine lost the payload or time")
                if q.reason == "lpp_unknown_type":
                    self._check_kept_values(q.detail)
                first_reason = first_reason or q.reason
                continue
            entry, body = d.entry, d.body
            assert entry is not None and body is not None
            self._check_entry(cfg, up, entry.body, accepted)
            check((entry.node, entry.fcnt, entry.ts_us) == (body["node"], body["fcnt"], up.received_us)
                  and entry.lane in range(4), f"entry {entry.node}/{entry.fcnt} does not match its reading")
        return rejected(first_reason) if first_reason else ACCEPTED

    @staticmethod
    def _check_kept_values(detail: str) -> None:
        """The values before an unknown LPP type end the detail as a JSON object, unless that type came first."""
        message, marker, kept = detail.partition("; values before it: ")
        check(bool(marker) != ("offset 0:" in message), f"values kept (or not) against the offset: {detail!r}")
        if marker:
            values = json.loads(kept)
            check(isinstance(values, dict) and values and all(
                re.fullmatch(r"[a-z0-9_]+", k) and type(v) is float and math.isfinite(v) for k, v in values.items()),
                f"values kept before an unknown type are not named finite floats: {kept!r}")

    def _check_entry(self, cfg: Config, up: Uplink, text: str, accepted: dict[str, int]) -> None:
        def no_constants(name: str) -> None:
            raise Violation(f"reading JSON holds {name}, which is not JSON")

        body = json.loads(text, parse_constant=no_constants)
        node_id, counter = struct.unpack_from(">II", up.payload, 1)
        node_hex = f"{node_id:08x}"
        check(body["node"] == node_hex and body["fcnt"] == counter, "reading names another node or counter")
        check(body["id"] == f"{cfg.gateway.id}/{node_hex}/{counter}", f"reading id {body['id']!r}")
        check(counter > accepted.get(node_hex, -1), f"counter {counter} accepted after {accepted.get(node_hex)}")
        accepted[node_hex] = counter
        node = cfg.node_by_id.get(node_id)
        check(node is not None or cfg.unknown_nodes == "accept", "an unknown node was accepted")
        if body["auth"] == "mic":
            check(node is not None and node.key_bytes() is not None
                  and nodeframe.verify(nodeframe.parse(up.payload), node.key_bytes()), "auth mic without a valid MIC")
        else:
            check(body["auth"] == "none" and (node is None or node.unauthenticated == "flag"),
                  f"auth {body['auth']!r} for a node whose policy is {node and node.unauthenticated}")
        batch = {"schema": "denen.readings/1", "gateway": cfg.gateway.id, "site": cfg.gateway.site,
                 "lane": body["lane"], "sent_us": T0_US, "readings": [body]}
        topic = f"{cfg.mqtt.topic_prefix}/{cfg.gateway.id}/readings/{body['lane']}"
        conv = self.serializer.convert(topic, json.dumps(batch).encode())
        check(not conv.rejects and conv.readings == 1,
              f"the bridge rejects a reading the gateway accepted: {[(r.reason, r.detail) for r in conv.rejects]}")


# =====================================================================================================================
# Radio module drivers: bytes from the serial port -> uplinks and incidents


class FakeLink:
    """The worker's side of a driver, without a port: records uplinks and incidents; feed() must never write."""

    def __init__(self, radio: str) -> None:
        self.radio = radio
        self.uplinks: list[Uplink] = []
        self.incidents: list[tuple[str, str]] = []

    def write(self, data: bytes) -> None:
        raise Violation(f"feed() wrote {data[:40]!r} to the port")

    def pump(self, timeout: float) -> bool:
        raise Violation("feed() pumped the port (a parser must not wait)")

    def deliver(self, uplinks: list[Uplink]) -> None:
        check(uplinks, "deliver() called with no uplinks")
        self.uplinks.extend(uplinks)

    def incident(self, kind: str, detail: str) -> None:
        check(kind in INCIDENT_KINDS, f"incident kind {kind!r} is not one of INCIDENT_KINDS")
        check(isinstance(detail, str) and detail.strip(), f"incident {kind} without a detail")
        self.incidents.append((kind, detail))


def _fed_in_reads(driver: tuple[Any, FakeLink], chunks: Sequence[bytes], *, hex_text: bool) -> tuple[bytes, FakeLink]:
    """``chunks`` fed to a fresh ``(driver, link)`` one read each (stamped ``T0_US + i`` µs), its uplinks checked
    against the whole stream; the stream and the link."""
    d, link = driver
    for i, c in enumerate(chunks):
        d.feed(c, T0_US + i)
    stream = b"".join(chunks)
    _check_uplinks(link, stream, range(T0_US, T0_US + len(chunks)), hex_text=hex_text)
    return stream, link


def _check_one_read_gives_the_same(driver: tuple[Any, FakeLink], stream: bytes, link: FakeLink) -> None:
    """The whole ``stream`` in one read to a fresh ``(driver, link)`` gives what ``link`` got in several."""
    whole, link2 = driver
    whole.feed(stream, T0_US)
    check(_signature(link) == _signature(link2),
          f"uplinks depend on the read boundaries: {_signature(link)} vs {_signature(link2)} in one read")


def _check_uplinks(link: FakeLink, stream: bytes, stamps: range, *, hex_text: bool) -> None:
    upper = stream.upper()
    for u in link.uplinks:
        check(isinstance(u, Uplink) and u.radio == link.radio, f"uplink from another radio: {u!r}")
        check(isinstance(u.payload, bytes) and u.payload, "uplink with an empty payload")
        found = (binascii.hexlify(u.payload).upper() in upper) if hex_text else (u.payload in stream)
        check(found or u.payload in stream, f"uplink payload {u.payload.hex()} is not in the input")
        # Finite, because the reading that carries them is JSON (no NaN) and the bridge writes them as floats (an
        # int beyond 1e308 cannot be one). No plausibility range is asserted: none is documented.
        check(u.rssi is None or (type(u.rssi) is int and _finite(u.rssi)),
              f"uplink RSSI {_short(u.rssi, 60)} is not a finite number of dBm")
        check(u.snr is None or (type(u.snr) is float and math.isfinite(u.snr)),
              f"uplink SNR {u.snr!r} is not a finite number of dB")
        check(u.src is None or re.fullmatch(r"[0-9A-F]{4}", u.src), f"uplink src {u.src!r}")
        check(u.received_us in stamps, "uplink stamped with a time no chunk had")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _signature(link: FakeLink) -> list[tuple[bytes, int | None, str, str | None]]:
    return [(u.payload, u.rssi, repr(u.snr), u.src) for u in link.uplinks]


def _outcome(link: FakeLink) -> Outcome:
    if link.uplinks:
        return ACCEPTED
    if link.incidents:
        return rejected(link.incidents[0][0])
    return IGNORED


def _hex(rng: random.Random, payload: bytes) -> bytes:
    text = payload.hex().encode()
    return text.upper() if rng.random() < 0.8 else text


RAK_TOKENS = (b"+EVT:", b"+EVT:RXP2P:", b"RXP2P", b":", b"::", b"-", b"\r", b"\n", b"\r\n", b"OK", b"AT_ERROR",
              b"AT_BUSY_ERROR", b"RAKwireless", b"Current Work Mode", b"+EVT:RXP2P, RSSI -60, SNR 11",
              b"+EVT:TXP2P DONE", b"P2P_RX_ON already", b"AT+P2P=", b"nan", b"inf", b"1e999", b"0x", b"\x00",
              b"\xff", b"\xfc\xfc\xfc", b" ", b"Command not found!!")
RAK_STATUSES = tuple(sorted(s.encode() for s in rak3172.STATUSES))


class Rak3172Target(Target):
    """Byte chunks through ``Rak3172.feed``. Variants: running (the normal receive state), a query pending (the
    parser during configuration), syncing (boot noise expected)."""

    name = "rak3172"
    error = "never raises (incidents)"
    specific = ("feed() never raises; every incident has a kind from INCIDENT_KINDS and a non-empty detail; every "
                "complete '+EVT:RXP2P:' line gives an uplink or an incident (never silence); an uplink's payload is "
                "hex text of the input and its RSSI/SNR are finite numbers; the uplinks do not depend on how the "
                "stream was cut into reads")
    weight = 14.0
    unit = 1500
    VARIANTS = ("running", "running", "running", "pending", "syncing")

    @cached_property
    def pool(self) -> list[bytes]:
        rng = random.Random(4)
        return [self._stream(rng, mutate=False) for _ in range(100)]

    def _line(self, rng: random.Random) -> list[bytes]:
        r = rng.random()
        if r < 0.55:
            rssi = rng.randint(-140, 5)
            snr = rng.choice((str(rng.randint(-20, 15)), f"{rng.uniform(-20, 15):.2f}"))
            return [b"+EVT:RXP2P:%d:%s:%s" % (rssi, snr.encode(), _hex(rng, valid_frame(rng)))]
        if r < 0.62:
            return [b"+EVT:RXP2P, RSSI %d, SNR %d" % (rng.randint(-140, 5), rng.randint(-20, 15)),
                    b"+EVT:" + _hex(rng, valid_frame(rng))]
        return [rng.choice((
            b"+EVT:RXP2P RECEIVE ERROR", b"+EVT:RXP2P RECEIVE TIMEOUT", b"+EVT:TXP2P DONE", b"OK",
            *RAK_STATUSES, b"AT+P2P=920600000:10:0:0:8:13", b"AT+VER=4.0.6", b"AT+NWM=0", b"AT+P2P=?",
            b"RAKwireless RAK3172-E Example", b"-" * 40, b"Version: RUI_4.0.6_RAK3172-E",
            b"Current Work Mode: LoRa P2P.", b"P2P_RX_ON already", b"AT+FOO: Command not found!!",
            b"\x00\xff\xfc\xfc", b"",
        ))]

    def _stream(self, rng: random.Random, *, mutate: bool) -> bytes:
        out = b""
        for _ in range(rng.choice((1, 1, 2, 3, 5))):
            for line in self._line(rng):
                if mutate and rng.random() < 0.3:
                    line = mutate_bytes(rng, line, tokens=RAK_TOKENS)
                out += line + rng.choice((b"\r\n",) * 6 + (b"\n", b"\r", b"\n\r", b""))
        if mutate and rng.random() < 0.2:
            out = mutate_bytes(rng, out, tokens=RAK_TOKENS, pool=self.pool, max_len=6000)
        if mutate and rng.random() < 0.03:
            out += rng.randbytes(rng.randrange(DEFAULT_MAX_LINE - 100, DEFAULT_MAX_LINE + 200)) + b"\r\n"
        return out

    def valid(self, rng: random.Random) -> tuple[str, tuple[bytes, ...]]:
        rssi, snr = rng.randint(-140, 5), rng.randint(-20, 15)
        stream = b"".join(b"+EVT:RXP2P:%d:%d:%s\r\n" % (rssi, snr, _hex(rng, valid_frame(rng)))
                          for _ in range(rng.randint(1, 3)))
        return "running", tuple(chunk(rng, stream))

    def generate(self, rng: random.Random) -> tuple[str, tuple[bytes, ...]]:
        if rng.random() < 0.05:
            stream = random_bytes(rng, 200)
        else:
            stream = self._stream(rng, mutate=rng.random() < 0.85)
        return rng.choice(self.VARIANTS), tuple(chunk(rng, stream))

    @staticmethod
    def _driver(variant: str) -> tuple[rak3172.Rak3172, FakeLink]:
        link = FakeLink("lora0")
        d = rak3172.Rak3172(radio_config("lora0", "rak3172", p2p=P2P), link)
        # The two non-default variants poke the parser's private state: the same code parses replies and boot
        # output during configure(), which needs a scripted module to reach otherwise.
        if variant == "pending":
            d._pending = rak3172._Pending("AT+P2P=?", b"AT+P2P", b"AT+P2P=?")
        elif variant == "syncing":
            d._expect_boot = True
            d._pending = rak3172._Pending("AT", b"AT", b"AT")
        return d, link

    def execute(self, data: tuple[str, tuple[bytes, ...]]) -> Outcome:
        variant, chunks = data
        stream, link = _fed_in_reads(self._driver(variant), chunks, hex_text=True)
        _check_one_read_gives_the_same(self._driver(variant), stream, link)
        lines = [ln for ln in re.split(rb"[\r\n]", stream)[:-1] if len(ln) <= DEFAULT_MAX_LINE]
        rx_lines = [ln for ln in lines if ln.startswith(b"+EVT:RXP2P:")]
        if variant != "syncing":  # while syncing, garbage is boot noise and deliberately not reported
            check(len(link.uplinks) + len(link.incidents) >= len(rx_lines),
                  f"{len(rx_lines)} RX lines gave {len(link.uplinks)} uplinks and {len(link.incidents)} incidents")
        if variant == "running" and len(lines) == 1 and rx_lines and lines[0].find(b"+EVT:", 5) < 0:
            parts = lines[0].split(b":")
            if link.uplinks:
                check(len(link.uplinks) == 1 and link.uplinks[0].payload == binascii.a2b_hex(parts[-1])
                      and link.uplinks[0].rssi == int(parts[2]), "RX line decoded wrongly")
            else:
                check([k for k, _ in link.incidents] in (["garbled_line"], ["bad_hex"]),
                      f"a refused RX line gave incidents {link.incidents}")
        return _outcome(link)


ES_PROMPT = b"Select Mode [1.terminal or 2.processor]"
ES_TOKENS = (b"\r\n", b"\r", b"\n", b"OK", b"NG 001", b"NG 102", b"VER 1.12", ES_PROMPT, b"\x02OK", b"\x06NG 102",
             b"FFB5BEEF0002", b"0000", b"FFFF", b"\x00", b"\xff", b"\x0c", b"\x0d", b"\x3e", b" ")
_ES_NOISE = bytes(range(0x00, 0x20)) + bytes(range(0x7F, 0x100))


def _es_header(rng: random.Random) -> bytes:
    rssi = rng.randint(-140, 0) & 0xFFFF
    return b"%04X%s%s" % (rssi, rng.choice((b"BEEF", b"2A01", b"beef")), b"%04X" % rng.randrange(0x10000))


class Es920lrTarget(Target):
    """Byte chunks through ``Es920lr.feed``: at boot, in operation with ASCII hex, ASCII raw and binary format, and
    in configuration mode with ``version`` pending."""

    name = "es920lr"
    error = "never raises (incidents)"
    specific = ("feed() never raises; every incident has a kind from INCIDENT_KINDS and a non-empty detail; in the "
                "line formats every complete line that is not a status or the boot prompt gives an uplink or an "
                "incident; an uplink's payload is in the input and its RSSI is an int16; in the line formats the "
                "uplinks do not depend on how the stream was cut into reads")
    weight = 14.0
    unit = 1500
    VARIANTS = ("boot", "ascii_hex", "ascii_hex", "ascii_raw", "binary", "binary", "config")

    def _ascii(self, rng: random.Random, variant: str, *, mutate: bool) -> bytes:
        out = b""
        for _ in range(rng.choice((1, 1, 2, 3, 5))):
            r = rng.random()
            if r < 0.6:
                payload = valid_frame(rng)
                body = payload.replace(b"\r\n", b"\r") if variant == "ascii_raw" else _hex(rng, payload)
                line = _es_header(rng) + body
            else:
                line = rng.choice((b"OK", b"NG 001", b"NG 002", b"NG 100", b"NG 102", b"VER 1.12", ES_PROMPT, b"",
                                   b"\r", b"\x00\xfc", b"version"))
            if mutate and rng.random() < 0.3:
                line = mutate_bytes(rng, line, tokens=ES_TOKENS)
            out += line + rng.choice((b"\r\n",) * 8 + (b"\n", b"\r", b""))
        return out

    def _binary(self, rng: random.Random, *, mutate: bool) -> bytes:
        out = b""
        for _ in range(rng.choice((1, 1, 2, 3, 5))):
            r = rng.random()
            if r < 0.65:
                body = _es_header(rng) + rng.choice((valid_frame(rng), rng.randbytes(rng.randint(1, 50))))[:50]
                frame = bytes([len(body)]) + body
            elif r < 0.8:
                frame = rng.choice((b"\x02OK", b"\x06NG 102", b"\x06NG 100"))
            elif r < 0.9:
                frame = b"\r\n" + ES_PROMPT + b"\r\n"
            else:
                frame = random_bytes(rng, 8)
            if mutate and rng.random() < 0.3:
                frame = mutate_bytes(rng, frame, tokens=ES_TOKENS)
            out += frame
        return out

    def _stream(self, rng: random.Random, variant: str, *, mutate: bool) -> bytes:
        out = self._binary(rng, mutate=mutate) if variant == "binary" else self._ascii(rng, variant, mutate=mutate)
        if mutate and rng.random() < 0.15:
            out = mutate_bytes(rng, out, tokens=ES_TOKENS, max_len=3000)
        return out

    def valid(self, rng: random.Random) -> tuple[str, tuple[bytes, ...]]:
        variant = rng.choice(("ascii_hex", "binary"))
        if variant == "binary":
            stream = b"".join(bytes([12 + len(p)]) + _es_header(rng) + p
                              for p in (valid_frame(rng, kind="trap", key=None) for _ in range(rng.randint(1, 3))))
        else:
            stream = b"".join(_es_header(rng) + _hex(rng, valid_frame(rng)) + b"\r\n" for _ in range(2))
        return variant, tuple(chunk(rng, stream))

    def generate(self, rng: random.Random) -> tuple[str, tuple[bytes, ...]]:
        variant = rng.choice(self.VARIANTS)
        if rng.random() < 0.05:
            stream = random_bytes(rng, 200)
        else:
            stream = self._stream(rng, variant, mutate=rng.random() < 0.85)
        return variant, tuple(chunk(rng, stream))

    @staticmethod
    def _driver(variant: str) -> tuple[es920lr.Es920lr, FakeLink]:
        link = FakeLink("lora1")
        fmt = "binary" if variant == "binary" else "ascii"
        enc = "raw" if variant == "ascii_raw" else "hex"
        d = es920lr.Es920lr(radio_config("lora1", "es920lr", es920={**ES920, "format": fmt, "payload_encoding": enc}),
                            link)
        # Reaching operation or configuration mode takes a scripted module; the states are set directly instead
        # (they are what configure() leaves behind).
        if variant in ("ascii_hex", "ascii_raw", "binary"):
            d._enter_operation()
        elif variant == "config":
            d._phase = "config"
            d._pending = es920lr._Pending("version")
        return d, link

    def execute(self, data: tuple[str, tuple[bytes, ...]]) -> Outcome:
        variant, chunks = data
        stream, link = _fed_in_reads(self._driver(variant), chunks, hex_text=variant != "ascii_raw")
        if variant == "binary":
            # Not compared across read boundaries: after noise, the binary framing resynchronises heuristically
            # (a length byte whose frame has not fully arrived waits for more bytes unless a complete frame follows
            # it), so about 0.2 % of noisy streams deliver a frame at a different read, or hold it until the next
            # bytes arrive. Every payload delivered is still checked above to come from the input.
            return _outcome(link)
        _check_one_read_gives_the_same(self._driver(variant), stream, link)
        data_lines = 0
        for line in stream.split(b"\r\n")[:-1]:
            stripped = line.lstrip(_ES_NOISE)
            if not line or len(line) > 1024 or stripped == b"OK" or re.fullmatch(rb"NG \d{3}", stripped):
                continue
            if stripped.startswith(ES_PROMPT[:11]) or (variant == "config" and stripped.startswith(b"VER")):
                continue
            data_lines += 1
        check(len(link.uplinks) + len(link.incidents) >= data_lines,
              f"{data_lines} data lines gave {len(link.uplinks)} uplinks and {len(link.incidents)} incidents")
        return _outcome(link)


class LineSplitterTarget(Target):
    """``LineSplitter`` against a reference model of the whole stream, for the RUI3 and ES920LR settings."""

    name = "splitter"
    error = "never raises"
    specific = ("the lines are exactly those of the whole stream split at the terminators, minus lines longer than "
                "max_line, each of which is reported once through on_overflow, whatever the read boundaries")
    weight = 6.0
    unit = 3000
    PROFILES = {"rui3": ((b"\r", b"\n"), True), "es920": ((b"\r\n",), False)}

    def _stream(self, rng: random.Random, max_line: int) -> bytes:
        out = b""
        for _ in range(rng.randrange(1, 8)):
            n = rng.choice((0, max_line - 1, max_line, max_line + 1, rng.randrange(2 * max_line + 3)))
            out += bytes(rng.choice(b"ABC\x00\xff") for _ in range(max(n, 0)))
            out += rng.choice((b"\r\n", b"\r\n", b"\r", b"\n", b"\n\r", b"\r\r\n", b""))
        return out

    def valid(self, rng: random.Random) -> tuple[str, int, tuple[bytes, ...]]:
        return rng.choice(tuple(self.PROFILES)), 64, tuple(chunk(rng, b"".join(b"L%d\r\n" % i for i in range(5))))

    def generate(self, rng: random.Random) -> tuple[str, int, tuple[bytes, ...]]:
        max_line = rng.choice((1, 2, 3, 8, 16, 64))
        stream = self._stream(rng, max_line)
        if rng.random() < 0.2:
            stream = mutate_bytes(rng, stream, tokens=(b"\r", b"\n", b"\r\n"))
        return rng.choice(tuple(self.PROFILES)), max_line, tuple(chunk(rng, stream))

    def execute(self, data: tuple[str, int, tuple[bytes, ...]]) -> Outcome:
        profile, max_line, chunks = data
        terms, skip_empty = self.PROFILES[profile]
        reported: list[int] = []
        s = LineSplitter(terms, max_line=max_line, skip_empty=skip_empty, on_overflow=reported.append)
        got: list[bytes] = []
        for c in chunks:
            got += s.feed(c)
        stream = b"".join(chunks)
        for other in terms[1:]:
            stream = stream.replace(other, terms[0])
        *parts, tail = stream.split(terms[0])
        want = [p for p in parts if len(p) <= max_line and (p or not skip_empty)]
        # An unfinished line may end in the first byte of a two-byte terminator (the CR of CR LF); whether that
        # byte belongs to the line is not known yet, so it does not count towards the line's length.
        partial = next((len(t) - 1 for t in terms if len(t) > 1 and tail.endswith(t[:-1])), 0)
        content = len(tail) - partial
        overflows = sum(len(p) > max_line for p in parts) + (content > max_line)
        check(got == want, f"lines {got} but the stream holds {want}")
        check(s.overflows == len(reported) == overflows, f"{s.overflows} overflows reported, {overflows} long lines")
        # An overflowing tail is thrown away, except possibly that partial terminator, kept to find the line's end.
        check(s.pending == len(tail) if content <= max_line else s.pending in (0, partial),
              f"pending {s.pending}, tail {tail!r}")
        if overflows:
            return rejected("line_overflow")
        return ACCEPTED if got else IGNORED


# =====================================================================================================================
# Bridge: MQTT topic + payload -> line protocol

LINEPROTO_REASONS = frozenset({"invalid_json", "invalid_schema", "unknown_schema", "wrong_gateway",
                               "invalid_reading", "timestamp_before_2020", "timestamp_in_future", "not_finite",
                               "invalid_text", "unknown_gateway"})
MEASUREMENTS = schema.NODE_KINDS | {"node_health", "gateway_health", "alert", "gateway_status"}
_FLOAT_LITERAL = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]\d+)?")
GATEWAYS = ("gw-fuzz-01", "gw-okutama-01", "g")
TRICKY_STRINGS = ("", " ", "a b", "a,b", "a=b", "a\\", "\\", "a\\ b", '"', "a\nb", "\r", "\t", "\x00", "\x7f",
                  "é", "木曽川", "\ufeff", "x" * 300, "fcnt", "rssi", "auth_ok", "raised", "gateway", "sos",
                  "denen.readings/1", "denen.readings/2", "denen.status/1", "00000101", "0000010G", "GW", "-gw")
TRICKY_VALUES: tuple[Any, ...] = (None, True, False, 0, -1, 1, 2**31, 2**32, 2**32 - 1, 2**63, 2**64, 10**30,
                                  10**400, -(10**400), 0.5, -0.0, 1e308, -1e308, 5e-324, float("nan"), float("inf"),
                                  float("-inf"), [], {}, [1, 2], {"a": 1}, *TRICKY_STRINGS)


def _reading_values(rng: random.Random, kind: str) -> dict[str, float]:
    return kinds.decode_values(kind, lpp.decode(kind_body(rng, kind)))


#: The bridge's clock in the converter target: after every timestamp _reading makes, so none is "in the future".
BRIDGE_NOW_US = T0_US + 10**12 + 10**9


def _reading(rng: random.Random, gateway: str) -> dict[str, Any]:
    r = rng.random()
    ts = T0_US + rng.randrange(10**12)
    if r < 0.12:
        fcnt = rng.getrandbits(20)
        return {"id": f"{gateway}/gateway/{fcnt}", "node": "gateway", "name": rng.choice(("gw", None)),
                "fcnt": fcnt, "kind": "gateway_health", "lane": "diagnostics", "ts_us": ts,
                "clock": "synced", "values": {"cpu_temp_c": 51.5, "journal_mb": float(rng.randrange(100))}}
    if r < 0.25:
        fcnt = rng.getrandbits(20)
        node = rng.choice((f"{rng.getrandbits(32):08x}", None))
        alert = {"id": f"a-{fcnt}", "key": f"river:{node}",
                 "type": rng.choice(("river_level", "sos", "battery_low")), "state": rng.choice(("raised", "cleared")),
                 "severity": rng.choice(("emergency", "warning", "info")), "node": node,
                 "name": rng.choice(("river-1", None, "木曽川")), "message": "level 182.5 cm above 150", "unit": "cm",
                 "reading": None}
        values = {"raised": float(alert["state"] == "raised"), "value": 182.5, "threshold": 150.0}
        return {"id": f"{gateway}/gateway/{fcnt}", "node": "gateway", "name": "gw", "fcnt": fcnt, "kind": "alert",
                "lane": "alarm", "ts_us": ts, "clock": "synced", "values": values, "alert": alert}
    kind = rng.choice(READING_KINDS)
    node = f"{rng.getrandbits(32):08x}"
    fcnt = rng.getrandbits(32)
    return {"id": f"{gateway}/{node}/{fcnt}", "node": node, "name": rng.choice((f"{kind}-1", None, "ノード 1")),
            "fcnt": fcnt, "kind": kind, "lane": {"sos": "sos", "trap": "alarm"}.get(kind, "telemetry"), "ts_us": ts,
            "clock": rng.choice(("synced", "unsynced", "corrected")), "radio": "lora0", "rssi": rng.randint(-140, 0),
            "snr": round(rng.uniform(-20, 15), 1), "auth": rng.choice(("mic", "none", "local")),
            "receipt": rng.random() < 0.2, "values": _reading_values(rng, kind)}


def _message(rng: random.Random) -> tuple[str, Any]:
    gateway = rng.choice(GATEWAYS)
    if rng.random() < 0.15:
        doc: dict[str, Any] = {"schema": "denen.status/1", "gateway": gateway,
                               "state": rng.choice(("online", "offline")), "agent": "0.1.0",
                               "ts_us": T0_US + rng.randrange(10**9)}
        if rng.random() < 0.3:
            del doc["ts_us"], doc["agent"]  # the Last Will
        return f"denen/v1/{gateway}/status", doc
    readings = [_reading(rng, gateway) for _ in range(rng.choice((1, 1, 2, 3, 6)))]
    lane = readings[0]["lane"]
    doc = {"schema": "denen.readings/1", "gateway": gateway, "site": "testville", "lane": lane, "sent_us": T0_US,
           "readings": readings}
    return f"denen/v1/{gateway}/readings/{lane}", doc


def _containers(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    out = [(path, obj)]
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict | list):
                out += _containers(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, dict | list):
                out += _containers(v, (*path, i))
    return out


def mutate_tree(rng: random.Random, obj: Any, *, values: Sequence[Any] = TRICKY_VALUES,
                keys: Sequence[str] = TRICKY_STRINGS, rounds: int | None = None) -> Any:
    """Edit a JSON-like tree in place: delete, add, retype or tweak a key or item (and return it)."""
    for _ in range(rounds if rounds is not None else 1 + small(rng, 1.25, 8)):
        _, node = rng.choice(_containers(obj))
        op = rng.randrange(7)
        if isinstance(node, dict):
            if not node:
                # Always a copy: a shared [] or {} from ``values`` edited later would change every later input of
                # the process, and inputs must stay a pure function of their seed (replay).
                node[rng.choice(keys)] = copy.deepcopy(rng.choice(values))
                continue
            k = rng.choice(list(node))
            if op == 0:
                del node[k]
            elif op == 1:
                node[rng.choice(keys)] = copy.deepcopy(rng.choice(values))
            elif op == 2:
                node[rng.choice(keys)] = node.pop(k)  # rename
            elif op == 3 and isinstance(node[k], int) and not isinstance(node[k], bool):
                node[k] = node[k] + rng.choice((-1, 1, -(2**32), 2**32, -node[k] - 1))
            elif op == 4 and isinstance(node[k], str):
                s = node[k]
                pos = rng.randrange(len(s) + 1)
                node[k] = s[:pos] + rng.choice(("\\", " ", ",", "=", '"', "\n", "\x00", "é", "/", "#")) + s[pos:]
            else:
                node[k] = copy.deepcopy(rng.choice(values))
        elif isinstance(node, list):
            if not node or op == 1:
                node.append(copy.deepcopy(rng.choice(values)))
            elif op == 0:
                del node[rng.randrange(len(node))]
            elif op == 2:
                node.append(copy.deepcopy(rng.choice(node)))
            else:
                node[rng.randrange(len(node))] = copy.deepcopy(rng.choice(values))
    return obj


def _scan(line: str, i: int, stops: str) -> int:
    """Index of the first of ``stops`` at or after ``i`` that a backslash does not escape (InfluxDB's scanner:
    a special character right after a backslash is escaped)."""
    while i < len(line):
        if line[i] in stops and (i == 0 or line[i - 1] != "\\"):
            return i
        i += 1
    return i


def parse_line_protocol(line: str) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]], str]:
    """Split one line protocol line as InfluxDB 1.x reads it; raises Violation when it cannot be read."""
    check("\n" not in line and "\r" not in line, f"a line holds a line break: {line!r}")
    end = _scan(line, 0, ", ")
    measurement, i = line[:end], end
    tags: list[tuple[str, str]] = []
    while i < len(line) and line[i] == ",":
        eq = _scan(line, i + 1, "=")
        stop = _scan(line, eq + 1, ", ")
        tags.append((line[i + 1:eq], line[eq + 1:stop]))
        i = stop
    check(i < len(line) and line[i] == " ", f"no fields in {line!r}")
    i += 1
    fields: list[tuple[str, str]] = []
    while True:
        eq = _scan(line, i, "=")
        check(eq < len(line), f"a field without '=' in {line!r}")
        key = line[i:eq]
        j = eq + 1
        if j < len(line) and line[j] == '"':
            j += 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            check(j < len(line), f"an unterminated string field in {line!r}")
            j += 1
        else:
            j = _scan(line, j, ", ")
        fields.append((key, line[eq + 1:j]))
        check(j < len(line), f"no timestamp in {line!r}")
        if line[j] == " ":
            return measurement, tags, fields, line[j + 1:]
        i = j + 1


class LineprotoTarget(Target):
    name = "lineproto"
    error = "never raises (Reject records)"
    specific = ("convert() never raises; each Reject has a documented reason, a non-empty detail and the content "
                "it refers to; every line parses as InfluxDB line protocol with a known measurement, float or string "
                "fields only, and a timestamp after 2020; the same message always gives the same lines")
    weight = 11.0
    unit = 1500

    def valid(self, rng: random.Random) -> tuple[str, bytes]:
        topic, doc = _message(rng)
        return topic, json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()

    def generate(self, rng: random.Random) -> tuple[str, bytes]:
        topic, doc = _message(rng)
        if rng.random() < 0.75:
            doc = mutate_tree(rng, doc)
        payload = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        r = rng.random()
        if r < 0.15:
            payload = mutate_bytes(rng, payload, tokens=(b'"', b",", b"{", b"}", b"[", b"]", b"NaN", b"1e999", b"\\",
                                                         b"\\u0000", b"\xff"), max_len=20_000)
        elif r < 0.2:
            payload = random_bytes(rng, 64)
        if rng.random() < 0.1:
            topic = rng.choice(("", "denen/v1", "denen/v1//readings/sos", "denen/v2/gw-fuzz-01/status",
                                topic + "/x", topic.replace("gw-fuzz-01", "gw-other"), topic.upper(),
                                "denen/v1/gw-fuzz-01/readings", "denen/v1/+/status"))
        return topic, payload

    def execute(self, data: tuple[str, bytes]) -> Outcome:
        topic, payload = data
        s = lineproto.Serializer("denen/v1", now_us=lambda: BRIDGE_NOW_US)
        conv = s.convert(topic, payload)
        for r in conv.rejects:
            check(r.reason in LINEPROTO_REASONS, f"reject reason {r.reason!r} is not documented")
            check(isinstance(r.detail, str) and r.detail.strip(), f"reject {r.reason} without a detail")
            check(r.kind in ("payload", "reading") and isinstance(r.content, bytes), f"odd reject {r!r}")
            check(r.kind == "reading" or r.content == payload, "a whole-message reject does not keep the payload")
        check(len(conv.lines) == len(conv.sources), "lines and sources differ in length")
        if any(r.kind == "payload" for r in conv.rejects):
            check(not conv.lines and len(conv.rejects) == 1, "a rejected message still gave lines")
        for line in conv.lines:
            measurement, tags, fields, ts = parse_line_protocol(line)
            check(measurement in MEASUREMENTS, f"measurement {measurement!r}")
            check(all(k and v for k, v in tags), f"an empty tag key or value in {line!r}")
            check(fields and all(k for k, _ in fields), f"an empty field key in {line!r}")
            for key, value in fields:
                if value.startswith('"'):
                    check(key in ("message", "agent"), f"string field {key} in {line!r}")
                else:
                    check(_FLOAT_LITERAL.fullmatch(value) and ("." in value or "e" in value)
                          and math.isfinite(float(value)), f"field {key}={value} is not a finite float literal")
            check(ts.isdigit() and int(ts) >= EPOCH_FLOOR_US, f"timestamp {ts!r}")
        again = lineproto.Serializer("denen/v1", now_us=lambda: BRIDGE_NOW_US).convert(topic, payload)
        cached = s.convert(topic, payload)
        check(again.lines == conv.lines == cached.lines, "the same message gave different lines")
        if conv.rejects:
            return rejected(conv.rejects[0].reason if not conv.lines else "partial:" + conv.rejects[0].reason)
        return ACCEPTED if conv.lines else IGNORED


# =====================================================================================================================
# Config loaders: YAML text -> Config / BridgeConfig or ConfigError

YAML_TOKENS = ("&a ", "*a", "<<: *a", "!!binary ", "!!python/object:os.system ", "!!float ", "!!int ", "!!str ",
               "!!set ", "!!omap ", "!custom ", "~", "null", "[]", "{}", "[", "{", "]", "}", "- ", "? ", "|", ">-",
               "'", '"', "#", "%YAML 1.2", "---", "...", "yes", "no", "on", "off", "true", "1e3", "0x10", "0o17",
               "2001-12-14", ".inf", ".nan", "\t", "key", "key_file", "password", "password_file", "tls:", "radios:",
               "nodes:", "gateway:", "id: ", "- name: x", "driver: rak3172", "driver: es920lr",
               "unknown_nodes: accept", "\"00000101\"", "00000101", "\"00000101000001010000010100000101\"",
               "keys/node.key", "/nonexistent", "../", "\\u0000", "é", "木曽川", "&b [*a, *a, *a, *a]")


def _block_yaml(obj: Any, indent: int = 0) -> str:
    """A small block-style YAML emitter for generated trees (scalars as JSON, which YAML reads the same)."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        out = ""
        for k, v in obj.items():
            key = json.dumps(str(k), ensure_ascii=False)
            if isinstance(v, dict | list) and v:
                out += f"{pad}{key}:\n" + _block_yaml(v, indent + 2)
            else:
                out += f"{pad}{key}: {_scalar(v)}\n"
        return out
    if isinstance(obj, list):
        if not obj:
            return pad + "[]\n"
        out = ""
        for v in obj:
            if isinstance(v, dict | list) and v:
                inner = _block_yaml(v, indent + 2)
                out += f"{pad}- " + inner[indent + 2:]
            else:
                out += f"{pad}- {_scalar(v)}\n"
        return out
    return pad + _scalar(obj) + "\n"


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, float) and not math.isfinite(v):
        return ".nan" if math.isnan(v) else (".inf" if v > 0 else "-.inf")
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False)
    return json.dumps(v, ensure_ascii=False)


_YAML_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_SECRET_RE = re.compile(r"(?m)^[ \t-]*[\"']?(?:key|password|token)[\"']?[ \t]*:[ \t]*[\"']?([0-9A-Za-z+/=_.-]{16,})")


def _sandbox() -> Path:
    """A directory for relative paths in fuzzed configs: the files the examples name exist, with mode 600."""
    root = Path(tempfile.mkdtemp(prefix="denen-fuzz-config-"))
    # Removed when the process that made it exits; forked fuzz workers inherit it and exit without atexit hooks.
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    files = {"keys/node.key": "00000101000001010000010100000101\n", "keys/bad.key": "xyz\n", "keys/empty.key": "",
             "secrets/bridge-mqtt.password": "pw\n", "secrets/influx.password": "pw\n",
             "secrets/influx.token": "tok\n", "certs/ca.crt": "-----BEGIN CERTIFICATE-----\n",
             "gateways.yaml": (REPO / "config" / "bridge" / "gateways.yaml").read_text(encoding="utf-8")}
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o600)
    return root


class _ConfigTargetBase(Target):
    error = "ConfigError"
    specific = ("ConfigError with at least one issue; every issue has a message, a line (if any) inside the text "
                "and a column >= 1; at least one issue carries a key or a line; no secret value of the text "
                "(key:, password:, token:) appears in the error")
    unit = 60
    seeds: tuple[str, ...] = ()
    source = "fuzz.yaml"

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    @cached_property
    def sandbox(self) -> Path:
        return _sandbox()

    @cached_property
    def texts(self) -> list[str]:
        return [(REPO / "config" / name).read_text(encoding="utf-8") for name in self.seeds]

    @cached_property
    def trees(self) -> list[Any]:
        from ruamel.yaml import YAML

        yaml = YAML(typ="safe", pure=True)
        return [json.loads(json.dumps(yaml.load(t), default=str)) for t in self.texts]

    def valid(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.5:
            return rng.choice(self.texts)
        tree = copy.deepcopy(rng.choice(self.trees))
        return _block_yaml(tree) if r < 0.8 else json.dumps(tree, indent=rng.choice((None, 2)), ensure_ascii=False)

    def generate(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.05:
            return self.valid(rng)
        if r < 0.45:
            tree = mutate_tree(rng, copy.deepcopy(rng.choice(self.trees)), values=TRICKY_VALUES + YAML_TOKENS,
                               keys=TRICKY_STRINGS + ("id", "key", "name", "kind", "radio", "driver", "port"))
            text = _block_yaml(tree) if rng.random() < 0.8 else json.dumps(tree, ensure_ascii=False)
            return mutate_text(rng, text, tokens=YAML_TOKENS, rounds=1) if rng.random() < 0.2 else text
        if r < 0.5:
            alphabet = (9, 10, 13, *range(32, 127), 0xE9, 0x3000)
            return "".join(chr(rng.choice(alphabet)) for _ in range(rng.randrange(80)))
        return mutate_text(rng, rng.choice(self.texts), tokens=YAML_TOKENS, pool=self.texts)

    def describe(self, data: str) -> str:
        return _short(data, 1500)

    def prepare(self) -> None:
        super().prepare()
        _ = self.sandbox

    def execute(self, text: str) -> Outcome:
        try:
            with warnings.catch_warnings():
                # ruamel warns about a reused anchor; under pytest's "error" filter that would be an exception
                # that the loader never sees in production.
                warnings.simplefilter("ignore")
                self.parse(text)
        except ConfigError as exc:
            return rejected(self._check_error(exc, text))
        return ACCEPTED

    def _check_error(self, exc: ConfigError, text: str) -> str:
        issues = exc.issues
        check(issues, "ConfigError without issues")
        # YAML counts CR, LF, CR LF, NEL, LS and PS as line breaks (an editor shows a lone CR as one too).
        last_line = len(_YAML_BREAKS.split(text)) + 1
        for issue in issues:
            check(isinstance(issue, ConfigIssue) and isinstance(issue.message, str) and issue.message.strip(),
                  f"issue without a message: {issue!r}")
            check(issue.line is None or (type(issue.line) is int and 1 <= issue.line <= last_line),
                  f"issue line {issue.line} outside the text ({last_line - 1} lines): {issue}")
            check(issue.column is None or (type(issue.column) is int and issue.column >= 1),
                  f"issue column {issue.column}: {issue}")
        check(any(i.key or i.line is not None for i in issues), f"no issue says where: {[str(i) for i in issues]}")
        shown = str(exc) + "".join(f"{i.message}{i.hint}" for i in issues)
        for m in _SECRET_RE.finditer(text):
            secret = m.group(1)
            if text.count(secret) == 1:  # appears only as that secret value, so seeing it in the error is a leak
                check(secret not in shown, f"the error shows the secret value {secret!r}")
        for prefix, reason in (("YAML syntax error", "yaml_syntax"), ("YAML error", "yaml_error"),
                               ("a tab character", "tab"), ("the file is empty", "empty"),
                               ("the top level must be", "not_a_mapping"), ("duplicate key", "duplicate_key")):
            if any(i.message.startswith(prefix) for i in issues):
                return reason
        return "validation"


class ConfigTarget(_ConfigTargetBase):
    name = "config"
    weight = 1.0
    seeds = ("demo.yaml", "forest-sos.yaml", "river-station.yaml", "trap-field.yaml")

    def parse(self, text: str) -> Any:
        with example_keys_env():  # the examples name their node keys by environment variable (key_env:)
            return parse_config(text, source=self.source, base_dir=self.sandbox)


class BridgeConfigTarget(_ConfigTargetBase):
    name = "bridge_config"
    weight = 1.5
    unit = 150
    seeds = ("bridge/bridge.yaml",)

    @cached_property
    def texts(self) -> list[str]:
        base = (REPO / "config" / "bridge" / "bridge.yaml").read_text(encoding="utf-8")
        v2 = base.replace("  type: v1\n", "  type: v2\n  org: town\n  bucket: denen\n  token_file: "
                                           "secrets/influx.token\n").replace("  database: denen ", "  # database ")
        tls = base.replace("  # tls:\n  #   ca_file: certs/ca.crt", "  tls:\n    ca_file: certs/ca.crt")
        return [base, v2, tls, "sink:\n  type: v1\n  database: d\n"]

    def parse(self, text: str) -> Any:
        return parse_bridge_config(text, source=self.source, base_dir=self.sandbox)


class ConfigAliasesTarget(ConfigTarget):
    """Anchors, aliases and merge keys (``&a``, ``*a``, ``<<: *a``) in an otherwise valid gateway config: nested
    aliases multiply (a list of ten aliases of a list of ten ... is 10^depth items, "billion laughs"), so this is
    where a loader can hang. The documents are tiny; what they expand to is up to ``max_items``."""

    name = "config_aliases"
    weight = 0.02
    unit = 5
    max_items = 10**9

    def document(self, rng: random.Random, max_items: int) -> str:
        base = rng.choice(self.texts)
        fan = rng.randint(2, 10)
        depth = rng.randint(1, 12)
        while depth > 1 and fan ** depth > max_items:
            depth -= 1
        anchors = [f"a0: &a0 [{', '.join(['x'] * fan)}]"]
        for i in range(1, depth + 1):
            anchors.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]")
        if rng.random() < 0.3:
            anchors.append(f"m: &m {{k{depth}: *a{depth}, <<: {{k: 1}}}}")
        block = "".join(f"  {line}\n" for line in anchors)
        top = rng.choice((f"anchors:\n{block}", f"x-anchors:\n{block}"))
        use = rng.choice((f"*a{depth}", f"[*a{depth}]", "{<<: *m}" if "&m" in block else f"*a{depth}"))
        where = rng.random()
        if where < 0.4:
            text = top + base + f"\nextra: {use}\n"
        elif where < 0.7:
            text = top + base.replace("\ngateway:\n", f"\ngateway:\n  name: {use}\n", 1)
        else:
            text = top + base.replace("\nnodes:\n", f"\nnodes:\n  - {use}\n", 1)
        return mutate_text(rng, text, tokens=("*a0", "&a0 ", "<<: *m", "*a1"), rounds=1) if rng.random() < 0.2 else text

    def valid(self, rng: random.Random) -> str:
        return rng.choice(self.texts)

    def generate(self, rng: random.Random) -> str:
        return self.document(rng, self.max_items)


TARGETS: dict[str, Target] = {t.name: t for t in (
    LppTarget(), FrameTarget(), KindsTarget(), ReadingsTarget(), Rak3172Target(), Es920lrTarget(),
    LineSplitterTarget(), LineprotoTarget(), ConfigTarget(), BridgeConfigTarget(), ConfigAliasesTarget(),
)}
"""Every target, by name."""

# The driver targets of their own modules add themselves to TARGETS (they import this module's base classes).
import tests.fuzz.target_meshtastic  # noqa: E402,F401
import tests.fuzz.target_modbus  # noqa: E402,F401


def run_one(target: Target, data: Any) -> Outcome:
    """Execute one input and check the outcome's shape (for tests: a Violation or a crash propagates)."""
    outcome = target.execute(data)
    check(isinstance(outcome, Outcome) and outcome.status in ("accepted", "rejected", "ignored"), f"{outcome!r}")
    check(outcome.status != "rejected" or outcome.reason, "a rejection without a reason")
    return outcome


def seeded(seed: int, target: str, index: int) -> random.Random:
    """The random source of input ``index`` of ``target`` in a run with ``seed``: inputs are reproducible."""
    return random.Random(f"{seed}/{target}/{index}")


def regenerate(seed: int, target: str, index: int) -> Any:
    """Input ``index`` of ``target`` in a run with ``seed``, exactly as the run generated it."""
    return TARGETS[target].generate(seeded(seed, target, index))
