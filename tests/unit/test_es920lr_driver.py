"""EASEL ES920LR driver against a scripted fake module (docs/protocols.md §2): configuration, the three states a
module can be found in, ASCII and binary framing, reboots and transmit."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from drivers.errors import ModuleError, ModuleTimeout
from drivers.es920lr import Es920lr, parse_rx_header
from drivers.types import Uplink
from tests.support import driver_link
from tests.support.radio import ES920, radio_config

PROMPT = b"\r\nSelect Mode [1.terminal or 2.processor]\r\n"


def lora1(**settings: Any) -> Any:
    """The radio ``lora1`` on an ES920LR (a RadioConfig): :data:`tests.support.radio.ES920`'s settings (channel 3,
    PAN BEEF, this module 0001 as coordinator, ASCII lines of hex) with ``settings`` over them."""
    return radio_config("lora1", "es920lr", port="fake://lora1", es920={**ES920, **settings})


_SETTINGS = {"node", "bw", "sf", "channel", "panid", "ownid", "dstid", "rcvid", "rssi", "transmode", "format",
             "power", "ack", "retry"}


class FakeEs920:
    """Scripted ES920LR: ``handle(line)`` returns the chunks the module sends back."""

    def __init__(self, *, state: str = "prompt", start_reply: tuple[bytes, ...] = (b"\r\n",),
                 version_reply: tuple[bytes, ...] = (b"VER 1.12\r\n",)) -> None:
        self.state = state  # prompt | config | operation
        self.start_reply = list(start_reply)
        self.version_reply = list(version_reply)
        self.settings: dict[str, str] = {}
        self.commands: list[bytes] = []
        self.sent: list[bytes] = []  # what went over the air in operation
        self.binary = False
        self.overrides: dict[bytes, list[list[bytes]]] = collections.defaultdict(list)
        self.tx_reply: list[bytes] | None = None

    def handle(self, line: bytes) -> list[bytes]:
        self.commands.append(line)
        if self.overrides.get(line):
            return self.overrides[line].pop(0)
        if self.state == "prompt":
            if line in (b"2", b"processor"):
                self.state = "config"
                return [b"OK\r\n"]
            return [b"NG 002\r\n"]
        if self.state == "config":
            name, _, value = line.decode().partition(" ")
            if name == "version":
                return list(self.version_reply)
            if name == "start":
                self.state = "operation"
                self.binary = self.settings.get("format") == "2"
                return list(self.start_reply)
            if name == "channel" and not 1 <= int(value) <= 15:
                return [b"NG 002\r\n"]
            if name in _SETTINGS:
                self.settings[name] = value
                return [b"OK\r\n"]
            return [b"NG 001\r\n"]
        self.sent.append(line)
        if self.tx_reply is not None:
            return list(self.tx_reply)
        return [b"\x02OK"] if self.binary else [b"OK\r\n"]


class ScriptLink(driver_link.ScriptLink):
    """Link whose writes go to a FakeEs920 (whole chunks in binary operation, CR LF lines otherwise); pump()
    feeds the module's answers to the driver, one chunk per call."""

    def __init__(self, module: FakeEs920, *, initial: tuple[bytes, ...] = ()) -> None:
        super().__init__("lora1", initial=initial, received_us=42)
        self.module = module

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.module.state == "operation" and self.module.binary:
            self.inbox.extend(self.module.handle(data))
            return
        for line in self.lines(data):
            self.inbox.extend(self.module.handle(line))


def make(module: FakeEs920 | None = None, config: Any = None, *, prompt: bool = True
         ) -> tuple[Es920lr, ScriptLink]:
    link = ScriptLink(module or FakeEs920(), initial=(PROMPT,) if prompt else ())
    d = Es920lr(config or lora1(), link)
    d.command_timeout_s = 0.1
    d.prompt_timeout_s = 0.05
    d.probe_timeout_s = 0.2
    d.grace_s = 0.02
    link.driver = d
    return d, link


def rx(payload: bytes, *, rssi: int = -75, pan: str = "BEEF", src: str = "0002") -> bytes:
    """A received frame as the module prints it in ASCII format (rssi and rcvid on)."""
    return f"{rssi & 0xFFFF:04X}{pan}{src}".encode() + payload + b"\r\n"


def rx_bin(payload: bytes, *, rssi: int = -75, pan: str = "BEEF", src: str = "0002") -> bytes:
    body = f"{rssi & 0xFFFF:04X}{pan}{src}".encode() + payload
    return bytes([len(body)]) + body


# -- configuration ---------------------------------------------------------------------------------------------


def test_configure_selects_processor_mode_and_sends_settings_in_order():
    d, link = make()
    d.configure()
    assert link.module.commands == [
        b"2", b"node 1", b"bw 4", b"sf 10", b"channel 3", b"panid BEEF", b"ownid 0001", b"dstid FFFF",
        b"rcvid 1", b"rssi 1", b"transmode 1", b"format 1", b"power 13", b"version", b"start",
    ]
    assert d.module_info["firmware"] == "VER 1.12"
    assert d.module_info["mode"] == "processor, coordinator, ascii/hex"
    assert link.incidents == []


@pytest.mark.parametrize(("bw", "code"), [(62.5, b"bw 3"), (125, b"bw 4"), (250, b"bw 5"), (500, b"bw 6")])
def test_bandwidth_codes(bw, code):
    d, link = make(config=lora1(bandwidth_khz=bw, channel=1, node="end_device", format="binary"))
    d.configure()
    assert code in link.module.commands
    assert b"node 2" in link.module.commands and b"format 2" in link.module.commands


def test_firmware_start_reply_ok_then_empty_line_is_accepted():
    d, link = make(FakeEs920(start_reply=(b"OK\r\n", b"\r\n"), version_reply=(b"VER 1.12\r\n", b"OK\r\n")))
    d.configure()
    link.inbox.append(rx(b"0A0B"))
    link.pump(0)
    assert [u.payload for u in link.uplinks] == [b"\x0a\x0b"]
    assert link.incidents == []


def test_start_answered_only_ok_is_accepted_after_the_timeout():
    d, link = make(FakeEs920(start_reply=(b"OK\r\n",)))
    d.configure()
    assert "module_timeout" not in link.kinds()


def test_ng_002_on_a_setting_is_a_module_error_naming_the_command():
    radio = lora1()
    # Channel 20 is past what the config allows (1..15): set past the model's check, for the module to refuse.
    d, link = make(config=radio.model_copy(update={"es920": radio.es920.model_copy(update={"channel": 20})}))
    with pytest.raises(ModuleError) as info:
        d.configure()
    assert (info.value.command, info.value.status) == ("channel 20", "NG 002")
    assert link.incidents == [("module_error", "channel 20 -> NG 002")]


def test_ng_001_unknown_command_is_a_module_error():
    module = FakeEs920()
    module.overrides[b"dstid FFFF"].append([b"NG 001\r\n"])
    d, link = make(module)
    with pytest.raises(ModuleError) as info:
        d.configure()
    assert info.value.status == "NG 001"


def test_missing_answer_is_a_module_timeout():
    module = FakeEs920()
    module.overrides[b"sf 10"].append([])
    d, link = make(module)
    with pytest.raises(ModuleTimeout):
        d.configure()
    assert link.kinds() == ["module_timeout"]


def test_missed_prompt_is_found_with_a_probe():
    d, link = make(prompt=False)
    d.configure()
    assert link.module.commands[:3] == [b"version", b"2", b"node 1"]
    assert link.incidents == []


def test_module_already_in_configuration_mode_is_not_sent_2():
    d, link = make(FakeEs920(state="config"), prompt=False)
    d.configure()
    assert link.module.commands[:2] == [b"version", b"node 1"]
    assert link.module.state == "operation"


def test_module_already_operating_keeps_its_settings_and_says_so():
    d, link = make(FakeEs920(state="operation"), prompt=False)
    d.configure()
    assert link.module.sent == [b"version"]  # the probe went out over the air
    assert d.module_info["mode"].startswith("operation")
    link.inbox.append(rx(b"01"))
    link.pump(0)
    assert [u.payload for u in link.uplinks] == [b"\x01"]


def test_silent_module_is_a_module_timeout():
    module = FakeEs920()
    module.overrides[b"version"].append([])
    d, link = make(module, prompt=False)
    with pytest.raises(ModuleTimeout):
        d.configure()
    assert link.kinds() == ["module_timeout"]


def rebooting_at_rcvid(times: int) -> FakeEs920:
    """A module that reboots (back to its prompt) on each of the first ``times`` ``rcvid 1`` commands."""
    module = FakeEs920()
    for _ in range(times):
        module.overrides[b"rcvid 1"].append([PROMPT])

    def reboot_state(line: bytes, orig=module.handle) -> list[bytes]:
        if line == b"rcvid 1" and module.overrides.get(line):
            module.state = "prompt"
        return orig(line)

    module.handle = reboot_state  # type: ignore[method-assign]
    return module


def test_reboot_during_configuration_starts_over_from_the_prompt():
    module = rebooting_at_rcvid(1)
    d, link = make(module)
    d.configure()
    assert link.kinds() == ["module_reboot"]
    assert module.commands.count(b"2") == 2
    assert module.state == "operation"


def test_module_that_keeps_rebooting_during_configuration_is_a_module_error():
    module = rebooting_at_rcvid(3)
    d, link = make(module)
    with pytest.raises(ModuleError, match="kept rebooting"):
        d.configure()
    assert link.kinds() == ["module_reboot"] * 3 + ["module_error"]
    assert module.commands.count(b"2") == 3
    assert not d.configuring and not d.reboot_detected


# -- ASCII reception -----------------------------------------------------------------------------------------------


def configured(module: FakeEs920 | None = None, config: Any = None) -> tuple[Es920lr, ScriptLink]:
    d, link = make(module, config)
    d.configure()
    return d, link


def test_rx_line_gives_rssi_src_and_hex_decoded_payload():
    d, link = configured()
    d.feed(rx(b"48656C6C6F", rssi=-75, src="00a2"), 1_700_000_000_000_000)
    assert link.uplinks == [Uplink("lora1", b"Hello", -75, None, "00A2", 1_700_000_000_000_000)]
    assert link.incidents == []


def test_rssi_header_is_int16_twos_complement():
    assert parse_rx_header(b"FFB500010002") == (-75, "0001", "0002")
    assert parse_rx_header(b"000500010002")[0] == 5
    assert parse_rx_header(b"800000010002")[0] == -32768
    with pytest.raises(ValueError):
        parse_rx_header(b"FFB5000100G2")


def test_several_frames_in_one_chunk_are_one_delivery_and_split_frames_join():
    d, link = configured()
    stream = rx(b"01") + rx(b"02") + rx(b"03")
    d.feed(stream[:-5], 1)
    d.feed(stream[-5:], 2)
    assert [[u.payload for u in b] for b in link.deliveries] == [[b"\x01", b"\x02"], [b"\x03"]]


def test_raw_payload_encoding_keeps_bytes_and_lone_cr_or_lf():
    d, link = configured(config=lora1(payload_encoding="raw"))
    d.feed(rx(b"a\rb\nc\xff"), 1)
    assert [u.payload for u in link.uplinks] == [b"a\rb\nc\xff"]


def test_raw_payload_with_crlf_is_cut_in_two_as_documented():
    d, link = configured(config=lora1(payload_encoding="raw"))
    d.feed(rx(b"ab\r\ncd"), 1)
    assert [u.payload for u in link.uplinks] == [b"ab"]
    assert link.kinds() == ["garbled_line"]


@pytest.mark.parametrize("payload", [b"ABC", b"ZZ", b""])
def test_bad_hex_payload_is_reported(payload):
    d, link = configured()
    d.feed(rx(payload), 1)
    assert link.uplinks == []
    assert link.kinds() == ["bad_hex"]


@pytest.mark.parametrize(("fmt", "stream", "payload"), [
    ("ascii", b"\xfc\xfc\xfc" + rx(b"0102"), b"\x01\x02"),
    ("binary", b"\xfc\xfc\xfc\x00" + rx_bin(b"\x42"), b"\x42"),
])
def test_reset_noise_before_a_frame_is_skipped_counted_once_and_the_frame_kept(fmt, stream, payload):
    d, link = configured(config=lora1(format=fmt))
    d.feed(stream, 1)
    assert [u.payload for u in link.uplinks] == [payload]
    assert link.kinds() == ["garbled_line"]


def test_line_that_is_not_a_frame_is_garbled():
    d, link = configured()
    d.feed(b"hello world\r\n", 1)
    assert link.kinds() == ["garbled_line"]
    assert "hello world" in link.incidents[0][1]


def test_only_crlf_ends_a_line():
    d, link = configured()
    d.feed(b"FFB5BEEF0002AB\rCD\r\n", 1)
    assert link.uplinks == []
    assert link.kinds() == ["bad_hex"]  # "AB\rCD" is one payload, and not hex


def test_overlong_line_is_reported():
    d, link = configured()
    d.feed(b"F" * 3000, 1)
    d.feed(b"\r\n" + rx(b"01"), 2)
    assert link.kinds() == ["line_overflow"]
    assert [u.payload for u in link.uplinks] == [b"\x01"]


def test_boot_prompt_mid_stream_is_a_reboot_and_configure_uses_it():
    d, link = configured()
    link.module.state = "prompt"
    d.feed(b"\xfc\xfc\xfc" + PROMPT, 1)
    assert "module_reboot" in link.kinds()
    assert d.reboot_detected
    before = len(link.module.commands)
    d.configure()
    assert link.module.commands[before] == b"2"  # no probe: the prompt was already seen
    assert not d.reboot_detected


# -- binary format -------------------------------------------------------------------------------------------


def binary() -> tuple[Es920lr, ScriptLink]:
    return configured(config=lora1(format="binary"))


def test_binary_frames_split_anywhere_are_reassembled():
    d, link = binary()
    stream = rx_bin(b"\x00\r\n\xff", rssi=-100, src="1234") + rx_bin(b"\x01")
    for i in range(len(stream)):
        d.feed(stream[i:i + 1], i)
    assert [(u.payload, u.rssi, u.src) for u in link.uplinks] == [(b"\x00\r\n\xff", -100, "1234"),
                                                                 (b"\x01", -75, "0002")]
    assert link.incidents == []


def test_start_ack_and_first_binary_frame_in_one_chunk():
    module = FakeEs920(start_reply=(b"\r\n" + rx_bin(b"\x07\x08"),))
    d, link = configured(module, lora1(format="binary"))
    assert [u.payload for u in link.uplinks] == [b"\x07\x08"]
    assert link.incidents == []


def test_binary_stale_partial_frame_is_dropped_on_resync():
    d, link = binary()
    d.feed(b"\x30", 1_000_000)  # a noise byte that looks like a length of 48, then nothing for a second
    d.feed(rx_bin(b"\x01"), 3_000_000)
    assert [u.payload for u in link.uplinks] == [b"\x01"]
    assert link.kinds() == ["garbled_line"]


def test_boot_prompt_inside_binary_stream_is_a_reboot():
    d, link = binary()
    d.feed(rx_bin(b"\x01") + b"\xfc\xfc" + PROMPT, 1)
    assert [u.payload for u in link.uplinks] == [b"\x01"]
    assert "module_reboot" in link.kinds()
    assert d.reboot_detected


def test_binary_transmit_is_length_prefixed():
    d, link = binary()
    d.transmit(b"\x7f\x00\r\n", timeout=0.5)
    assert link.written[-1] == b"\x04\x7f\x00\r\n"


def test_binary_ng_reply_is_a_module_error():
    module = FakeEs920()
    module.tx_reply = [b"\x06NG 103"]
    d, link = configured(module, lora1(format="binary"))
    with pytest.raises(ModuleError) as info:
        d.transmit(b"\x01", timeout=0.5)
    assert info.value.status == "NG 103"
    assert link.incidents == [("module_error", "transmit -> NG 103")]


# -- transmit (ASCII) ------------------------------------------------------------------------------------------


def test_ascii_hex_transmit_writes_hex_line_and_waits_for_ok():
    d, link = configured()
    d.transmit(b"\xa1\xb2", timeout=0.5)
    assert link.written[-1] == b"A1B2\r\n"
    assert link.module.sent == [b"A1B2"]


@pytest.mark.parametrize("status", [b"NG 100", b"NG 101", b"NG 102", b"NG 103", b"NG 104"])
def test_send_failures_are_module_errors(status):
    module = FakeEs920()
    module.tx_reply = [status + b"\r\n"]
    d, link = configured(module)
    with pytest.raises(ModuleError) as info:
        d.transmit(b"\x01", timeout=0.5)
    assert info.value.status == status.decode()


def test_transmit_without_answer_times_out():
    module = FakeEs920()
    module.tx_reply = []
    d, link = configured(module)
    with pytest.raises(ModuleTimeout):
        d.transmit(b"\x01", timeout=0.05)
    assert link.kinds() == ["module_timeout"]


def test_transmit_limits():
    d, _ = configured()
    d.transmit(bytes(25), timeout=0.5)  # 50 hex characters: the module's limit
    with pytest.raises(ValueError):
        d.transmit(bytes(26), timeout=0.5)
    with pytest.raises(ValueError):
        d.transmit(b"", timeout=0.5)
    raw, _ = configured(config=lora1(payload_encoding="raw"))
    with pytest.raises(ValueError, match="CR LF"):
        raw.transmit(b"a\r\nb", timeout=0.5)


def test_transmit_before_configuration_is_refused():
    d, _ = make()
    with pytest.raises(ModuleError):
        d.transmit(b"\x01", timeout=0.1)


def test_binary_frame_behind_a_noise_length_byte_is_not_held_back():
    d, link = binary()
    # 0x1E looks like a length of 30, but only a complete 17-byte frame follows: deliver it now, not when the
    # next byte happens to arrive.
    d.feed(b"J\x1e" + rx_bin(b"last"), 1)
    assert [u.payload for u in link.uplinks] == [b"last"]
    assert link.kinds() == ["garbled_line"]


def test_binary_incomplete_frame_waits_for_its_rest():
    d, link = binary()
    frame = rx_bin(b"\x01\x02\x03")
    d.feed(frame[:9], 1)
    assert link.uplinks == []
    d.feed(frame[9:], 2)
    assert [u.payload for u in link.uplinks] == [b"\x01\x02\x03"]
    assert link.incidents == []
