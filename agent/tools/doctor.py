"""``denen doctor``: one screen that says whether this gateway can work, and how to fix what cannot.

Checks, in order (each gets a status and, unless it is ok, a fix hint)::

    config        the config loads; which one is active (path, SHA-256, flashed or not)
    radio <name>  the serial port is present, free and the module answers, with its firmware and mode
    broker        the MQTT broker is reachable with the config's TLS settings and credentials (CONNACK reason)
    clock         the wall clock is plausible and synchronised (kernel NTP state)
    journal       the journal folder is writable; free disk space against journal.quota_mb; current size
    gpio          gpiozero imports and a pin factory works (skipped when the config has no gpio section)
    permissions   the current user may use the serial ports and GPIO (groups dialout and gpio)

Statuses: ``ok``, ``warn`` (works, but look at it), ``fail`` (will not work), ``skip`` (not applicable, or not
probed on purpose). Exit code: **0** all ok (or skipped), **1** warnings, **2** failures. ``--json`` prints the
same as one JSON document (``"schema": "denen.doctor/1"``).

Doctor never disturbs a running agent: when the agent of this config is running (its pid is in the journal), its
radios are not probed; a port another program holds open is reported as busy, not opened. The probes are short
and only ask: RAK3172 ``AT``, ``AT+VER=?``, ``AT+NWM=?``, ``AT+P2P=?``; ES920LR ``version`` (and ``2``, processor
mode, when it sits at its mode prompt, which is not saved and is what the agent selects anyway). The broker
connection uses its own client id (``<client id>-doctor-<pid>``) and no Last Will, so the gateway's own session
and its online/offline status are left alone.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import grp
import json
import logging
import os
import pwd
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError, ConfigError
from agent.i18n import N_, _, local_time

# The CLI imports this module to build its parser: config models (pydantic), the journal, ctypes (clock), socket
# and ssl load inside the checks that use them.
if TYPE_CHECKING:
    from agent.config import Config, RadioConfig

__all__ = [
    "Check",
    "Host",
    "add_arguments",
    "exit_code",
    "main",
    "port_holders",
    "render",
    "run_checks",
    "to_json",
]

log = logging.getLogger(__name__)

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
_EXIT = {OK: 0, SKIP: 0, WARN: 1, FAIL: 2}
DOCTOR_SCHEMA = "denen.doctor/1"
_MIB = 1024 * 1024
#: Below this much free space the journal cannot grow even for an SOS; a hard failure.
_MIN_FREE_BYTES = 64 * _MIB
_SERIAL_GLOBS = ("/dev/lora*", "/dev/ttyUSB*", "/dev/ttyACM*", "/dev/ttyAMA*", "/dev/serial/by-id/*")
_RAK_STATUSES = frozenset({
    "OK", "AT_ERROR", "AT_PARAM_ERROR", "AT_BUSY_ERROR", "AT_TEST_PARAM_OVERFLOW", "AT_NO_CLASSB_ENABLE",
    "AT_NO_NETWORK_JOINED", "AT_RX_ERROR", "AT_MODE_NO_SUPPORT", "AT_COMMAND_NOT_FOUND", "AT_UNSUPPORTED_BAND",
})
_RAK_MODES = {"0": "LoRa P2P", "1": "LoRaWAN", "2": "FSK"}
_OTHER_BAUDS = (115200, 9600, 57600, 38400, 19200, 230400)
_RX_HEADER = re.compile(rb"[0-9A-Fa-f]{12}")


@dataclass
class Check:
    """The result of one check.

    Attributes:
        name: short name shown in the first column (``radio lora0``).
        status: ``ok``, ``warn``, ``fail`` or ``skip``.
        summary: what was found, one line.
        hint: how to fix it (None when ok).
        details: machine-readable facts (firmware, mode, sizes in bytes ...), for ``--json``.
    """

    name: str
    status: str
    summary: str
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _kernel_clock_synced() -> bool | None:
    # The three-way answer (None: cannot tell), not the agent's trust decision.
    from agent.gateway import clock  # noqa: PLC0415

    return clock.kernel_synced()


def _group_names() -> set[str]:
    names = set()
    for gid in {os.getegid(), *os.getgroups()}:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    return names


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


@dataclass
class Host:
    """What doctor asks the operating system; tests replace single answers.

    Attributes:
        euid: effective user id.
        user: the current user's name.
        groups: names of the groups the current process has.
        clock_synced: the kernel's NTP state: True, False, or None when it cannot be asked.
        now_us: the wall clock, µs since the epoch.
        holders: pids of other processes holding a device open (see :func:`port_holders`).
    """

    euid: Callable[[], int] = os.geteuid
    user: Callable[[], str] = _user_name
    groups: Callable[[], set[str]] = _group_names
    clock_synced: Callable[[], bool | None] = _kernel_clock_synced
    now_us: Callable[[], int] = lambda: time.time_ns() // 1000  # noqa: E731
    holders: Callable[[str], list[int]] = field(default_factory=lambda: port_holders)


# ---------------------------------------------------------------------------------------------------------------
# Who holds a serial port


def _pty_index(path: str) -> int | None:
    """N for /dev/pts/N, else None."""
    head, _sep, tail = path.rpartition("/")
    return int(tail) if head == "/dev/pts" and tail.isdigit() else None


def _holds_master_of(pid: str, index: int) -> bool:
    """Whether a process holds the master side of pty ``index`` (it *is* the device: a simulator)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") not in ("/dev/ptmx", "/dev/pts/ptmx"):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("tty-index:") and int(line.split(":", 1)[1]) == index:
                        return True
        except (OSError, ValueError):
            continue
    return False


def port_holders(device: str) -> list[int]:
    """Pids of other processes that have ``device`` open, from ``/proc/*/fd``.

    Only processes this user may inspect are seen (all of them as root). A process holding the *master* side of
    a pty whose slave is ``device`` is the device itself (a simulator such as ``denen sim``), not a competitor,
    and is left out, as is this process.

    Args:
        device: the device path (symlinks are resolved).
    """
    real = os.path.realpath(device)
    me = str(os.getpid())
    found: list[int] = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target == real:
                found.append(int(pid))
                break
    index = _pty_index(real)
    if index is not None:
        found = [p for p in found if not _holds_master_of(str(p), index)]
    return found


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------------------------------
# Radio probes


class _Lines:
    """Reads lines from a port until a deadline, with pyserial's short read timeout."""

    def __init__(self, port: Any, terminators: tuple[bytes, ...]) -> None:
        from drivers.transport import LineSplitter  # noqa: PLC0415  # keeps `denen doctor --help` light

        self.port = port
        self.splitter = LineSplitter(terminators, skip_empty=True)
        self.raw = bytearray()  # everything read, for telling noise from silence

    def until(self, done: Callable[[bytes], bool], timeout_s: float) -> list[bytes]:
        """Lines read until ``done(line)`` is true for one of them, or ``timeout_s`` passes."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunk = self.port.read(self.port.in_waiting or 1)
            if not chunk:
                continue
            self.raw += chunk
            for line in self.splitter.feed(chunk):
                out.append(line)
                if done(line):
                    return out
        return out


def _printable(data: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in data)


def _noise_hint(lines: _Lines, radio: RadioConfig) -> str:
    if lines.raw and not _printable(bytes(lines.raw)):
        return _("bytes arrived but made no sense: wrong baud rate? radios[].baudrate is {baud} "
                 "(RAK3172 and ES920LR default to 115200)").format(baud=radio.baudrate)
    return _("check that the module has power, that the cable is a data cable, and that this is the module's "
             "port (`ls -l /dev/lora* /dev/serial/by-id/`)")


def _rak_command(lines: _Lines, command: str, timeout_s: float) -> tuple[str | None, list[str]]:
    """Send one AT command; return (status or None on timeout, values of ``AT+X=`` lines)."""
    lines.port.write(command.encode("ascii") + b"\r\n")
    name = command.split("=", 1)[0].upper().encode()
    got = lines.until(lambda ln: ln.decode("ascii", "replace") in _RAK_STATUSES, timeout_s)
    values = [ln[len(name) + 1:].decode("ascii", "replace").strip() for ln in got
              if ln.upper().startswith(name + b"=")]
    status = next((ln.decode() for ln in got if ln.decode("ascii", "replace") in _RAK_STATUSES), None)
    return status, values


def _p2p_matches(value: str, radio: RadioConfig) -> bool:
    """Whether the module's ``AT+P2P=?`` value already has the config's frequency, SF, bandwidth and coding rate."""
    from drivers.rak3172 import parse_p2p  # noqa: PLC0415

    p2p = radio.p2p
    if p2p is None:
        return True
    try:
        freq, sf, bw, cr, _pre, _txp = parse_p2p(value)
    except ValueError:
        return False
    return (freq, sf, bw, cr) == (p2p.frequency_hz, p2p.spreading_factor, float(p2p.bandwidth_khz), p2p.coding_rate)


def _probe_rak3172(port: Any, radio: RadioConfig, timeout_s: float) -> Check:
    name = f"radio {radio.name}"
    lines = _Lines(port, (b"\r", b"\n"))
    status = None
    # A module that is booting or has noise on the line needs a few tries, as the driver's sync does.
    for _attempt in range(3):
        status, _values = _rak_command(lines, "AT", min(timeout_s, 0.7))
        if status == "OK":
            break
    if status != "OK":
        if b"NG 00" in lines.raw:
            return Check(name, FAIL, _("{port}: the module answers like an ES920LR, not a RAK3172").format(
                             port=radio.port), _("set radios[].driver: es920lr for this port"))
        # A module at another speed reads our bytes as garbage and stays silent: try the usual speeds once
        # (pre-RUI3 firmware runs at 9600), since "set baudrate: 9600" is a far better hint than "no answer".
        for baud in _OTHER_BAUDS:
            if baud == radio.baudrate:
                continue
            port.baudrate = baud
            port.reset_input_buffer()
            other = _Lines(port, (b"\r", b"\n"))
            # Twice: the garbage received at the wrong speed may still sit in the module's line buffer, and
            # spoils the first AT (AT_ERROR); that reply already proves the speed, but the second is cleaner.
            replies = [_rak_command(other, "AT", min(timeout_s, 0.3))[0] for _attempt in range(2)]
            if "OK" in replies:
                return Check(name, FAIL, _("{port}: the module answers at {baud} baud, not at {configured}").format(
                                 port=radio.port, baud=baud, configured=radio.baudrate),
                             _("set radios[].baudrate: {baud}").format(baud=baud), {"answers_at_baud": baud})
        return Check(name, FAIL, (_("{port}: no answer to AT (got {status})") if status
                                  else _("{port}: no answer to AT")).format(port=radio.port, status=status),
                     _noise_hint(lines, radio), {"received": bytes(lines.raw[:64]).hex()})
    _status, ver = _rak_command(lines, "AT+VER=?", timeout_s)
    nwm_status, nwm = _rak_command(lines, "AT+NWM=?", timeout_s)
    firmware = ver[-1] if ver else "unknown"
    mode_code = nwm[-1] if nwm else None
    mode = _RAK_MODES.get(mode_code or "", f"unknown ({nwm_status})")
    details: dict[str, Any] = {"module": "RAK3172", "firmware": firmware, "mode": mode}
    if mode_code == "0":
        _status, p2p = _rak_command(lines, "AT+P2P=?", timeout_s)
        if p2p:
            details["p2p"] = p2p[-1]
    summary = _("{port}: RAK3172 answers, firmware {firmware}, mode {mode}").format(
        port=radio.port, firmware=firmware, mode=mode)
    if "p2p" in details:
        summary += f" ({details['p2p']})"
        if not _p2p_matches(details["p2p"], radio):
            summary += _("; the agent applies the config's P2P settings on start")
    if mode_code not in ("0", None):
        # The driver switches the work mode itself (AT+NWM=0 and one reboot) when the agent starts.
        return Check(name, OK, summary + _("; the agent switches it to LoRa P2P on start"), None, details)
    if mode_code is None:
        return Check(name, WARN, summary, _("the module did not report its work mode (AT+NWM=?); update RUI3"),
                     details)
    return Check(name, OK, summary, None, details)


def _probe_es920lr(port: Any, radio: RadioConfig, timeout_s: float) -> Check:
    name = f"radio {radio.name}"
    lines = _Lines(port, (b"\r\n",))

    def prompt(line: bytes) -> bool:
        return line.startswith(b"Select Mode")

    def answer(line: bytes) -> bool:
        return line.startswith(b"VER") or line == b"OK" or line.startswith(b"NG ") or prompt(line)

    # The boot prompt only shows if the module was reset just now; usually it went by long ago.
    heard = lines.until(prompt, min(timeout_s, 0.3))
    at_prompt = any(prompt(ln) for ln in heard)
    if not at_prompt:
        port.write(b"version\r\n")
        heard = lines.until(answer, timeout_s)
        at_prompt = any(prompt(ln) or ln == b"NG 002" for ln in heard)
        if not at_prompt and any(ln.startswith(b"VER") for ln in heard):
            firmware = next(ln for ln in heard if ln.startswith(b"VER")).decode("ascii", "replace")
            return Check(name, OK, _("{port}: ES920LR answers, firmware {firmware}, configuration mode "
                                     "(processor)").format(port=radio.port, firmware=firmware), None, {"module": "ES920LR", "firmware": firmware, "mode": "configuration"})
        if not at_prompt and any(ln == b"OK" or ln.startswith(b"NG 1") for ln in heard):
            # Operation mode, ASCII format: the word went out over the air, as the agent's own probe does.
            return Check(name, OK, _("{port}: ES920LR answers in operation mode (ascii); firmware not shown "
                                     "in this mode").format(port=radio.port), None, {"module": "ES920LR", "firmware": "unknown", "mode": "operation"})
        if b"\x02OK" in lines.raw or b"\x06NG 1" in lines.raw:
            return Check(name, OK, _("{port}: ES920LR answers in operation mode (binary)").format(port=radio.port),
                         None,
                         {"module": "ES920LR", "firmware": "unknown", "mode": "operation (binary)"})
    if at_prompt:
        # Processor mode is what the agent selects on start; the choice is not saved, so this changes nothing.
        port.write(b"2\r\n")
        lines.until(lambda ln: ln == b"OK" or ln.startswith(b"NG"), timeout_s)
        port.write(b"version\r\n")
        got = lines.until(lambda ln: ln.startswith(b"VER") or ln.startswith(b"NG"), timeout_s)
        ver = next((ln.decode("ascii", "replace") for ln in got if ln.startswith(b"VER")), None)
        if ver is not None:
            return Check(name, OK, _("{port}: ES920LR answers, firmware {firmware}, was at its mode prompt "
                                     "(processor mode selected)").format(port=radio.port, firmware=ver), None,
                         {"module": "ES920LR", "firmware": ver, "mode": "configuration"})
        return Check(name, WARN, _("{port}: ES920LR shows its mode prompt but did not report a version").format(
                         port=radio.port),
                     _("reset the module and run doctor again"), {"module": "ES920LR", "mode": "prompt"})
    if _RX_HEADER.search(bytes(lines.raw)):
        # RSSI, PAN and source id as 12 hex digits: frames received in operation mode (either format).
        return Check(name, OK, _("{port}: ES920LR is in operation mode and receiving frames; firmware not "
                                 "shown in this mode").format(port=radio.port), None, {"module": "ES920LR", "firmware": "unknown", "mode": "operation"})
    if lines.raw and not _printable(bytes(lines.raw)):
        return Check(name, FAIL, _("{port}: no sensible answer to `version`").format(port=radio.port),
                     _noise_hint(lines, radio),
                     {"received": bytes(lines.raw[:64]).hex()})
    return Check(name, WARN, _("{port}: no answer to `version`").format(port=radio.port),
                 _("a module in operation mode with the binary format ignores text: power-cycle it (it then shows "
                   "its mode prompt) and run doctor again; otherwise {hint}").format(hint=_noise_hint(lines, radio)),
                 {"module": "ES920LR"})


_PROBES: dict[str, Callable[[Any, RadioConfig, float], Check]] = {
    "rak3172": _probe_rak3172,
    "es920lr": _probe_es920lr,
}


def _present_ports() -> list[str]:
    found: list[str] = []
    for pattern in _SERIAL_GLOBS:
        found.extend(sorted(glob.glob(pattern)))
    return found


def _check_radio(radio: RadioConfig, timeout_s: float, host: Host, agent_pid: int | None) -> Check:
    import serial  # noqa: PLC0415

    name = f"radio {radio.name}"
    url = radio.port
    is_device = "://" not in url
    if not is_device and url.startswith("loop://"):
        return Check(name, SKIP, _("{port} is a loopback test port; there is no module to ask").format(port=url))
    if agent_pid is not None:
        return Check(name, SKIP, _("{port}: in use by the running agent (pid {pid}); not probed").format(
                         port=url, pid=agent_pid),
                     _("to probe the module, stop the agent first: sudo systemctl stop denen"), {"agent_pid": agent_pid})
    if is_device:
        if not os.path.exists(url):
            present = _present_ports()
            listing = ", ".join(present) if present else _("none")
            return Check(name, FAIL, _("{port} is not present").format(port=url),
                         _("plug in the module and check the cable; serial ports present: {ports}; "
                           "deploy/edge/99-denen-lora.rules names modules /dev/lora0, /dev/lora1...").format(
                             ports=listing),
                         {"present": present})
        holders = host.holders(url)
        if holders:
            who = ", ".join(f"{pid} ({_process_name(pid)})" for pid in holders)
            return Check(name, WARN, _("{port} is busy: held open by pid {holders}; not probed").format(
                             port=url, holders=who),
                         _("close the other program (a terminal such as screen or minicom, another denen, "
                           "ModemManager) and run doctor again"), {"holders": holders})
        if not os.access(os.path.realpath(url), os.R_OK | os.W_OK):
            return Check(name, FAIL, _("{port}: permission denied").format(port=url),
                         _("add the user to the serial port's group: sudo usermod -aG dialout {user} "
                           "(then log out and in)").format(user=host.user()))
    try:
        # exclusive: a flock, so a second program that also locks (another doctor) cannot interleave.
        port = serial.serial_for_url(url, baudrate=radio.baudrate, timeout=0.05, write_timeout=1.0,
                                     exclusive=True if is_device else None)
    except (serial.SerialException, OSError, ValueError) as exc:
        text = str(exc)
        if "exclusively lock" in text:
            return Check(name, WARN, _("{port} is busy: locked by another program; not probed").format(port=url),
                         _("close the other program and run doctor again"))
        return Check(name, FAIL, _("{port}: cannot open: {error}").format(port=url, error=text),
                     _("check radios[].port"))
    try:
        port.reset_input_buffer()
        probe = _PROBES.get(radio.driver)
        if probe is None:
            return Check(name, SKIP, _("{port} opens; no probe for driver {driver}").format(
                port=url, driver=radio.driver))
        return probe(port, radio, timeout_s)
    except (serial.SerialException, OSError) as exc:
        return Check(name, FAIL, _("{port}: failed while probing: {error}").format(port=url, error=exc),
                     _("the port vanished or errored: check the cable and `dmesg | tail`"))
    finally:
        port.close()


# ---------------------------------------------------------------------------------------------------------------
# Broker


def _close_sockets_left_in(exc: BaseException) -> None:
    """Close sockets paho opened but did not close before raising (paho 2.2 leaks one on a failed TLS handshake)."""
    import socket  # noqa: PLC0415

    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                try:
                    value.close()
                except OSError:
                    pass
        tb = tb.tb_next


def _check_broker(config: Config, timeout_s: float) -> Check:
    import socket  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

    cfg = config.mqtt
    where = f"{cfg.host}:{cfg.port}"
    tls = cfg.tls_settings()
    details: dict[str, Any] = {"host": cfg.host, "port": cfg.port, "tls": tls is not None,
                               "username": cfg.username}
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        # Never the gateway's own id: the broker would drop the running agent's session for ours.
        client_id=f"{cfg.effective_client_id(config.gateway.id)}-doctor-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.connect_timeout = timeout_s
    try:
        password = cfg.password_value()
    except ConfigError as exc:
        return Check("broker", FAIL, _("cannot read the MQTT password: {error}").format(error=exc),
                     _("check mqtt.password_file"), details)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    if tls is not None:
        try:
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return Check("broker", FAIL, _("the TLS files cannot be used: {error}").format(error=exc),
                         _("mqtt.tls.ca_file must be a PEM CA certificate; cert_file/key_file a matching client "
                           "pair"), details)
        client.tls_insecure_set(tls.insecure)
    result: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        result["reason"] = reason

    client.on_connect = on_connect
    try:
        client.connect(cfg.host, cfg.port, keepalive=max(5, int(timeout_s) + 5), clean_start=True)
    except ssl.SSLCertVerificationError as exc:
        _close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: the broker's TLS certificate is not trusted: {error}").format(
                         broker=where, error=exc.verify_message),
                     _("mqtt.tls.ca_file must be the CA that signed the broker's certificate, and mqtt.host must be "
                       "a name (or IP) the certificate lists"), details)
    except ssl.SSLError as exc:
        _close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: TLS handshake failed: {error}").format(
                         broker=where, error=exc.reason or exc),
                     _("is this the broker's TLS port (usually 8883)? does it require a client certificate "
                       "(mqtt.tls.cert_file/key_file)?"), details)
    except ConnectionRefusedError as exc:
        _close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: connection refused").format(broker=where),
                     _("no broker listens there: check mqtt.host and mqtt.port, and that the broker runs"), details)
    except socket.gaierror as exc:
        return Check("broker", FAIL, _("{broker}: cannot resolve host name ({error})").format(
                         broker=where, error=exc.strerror),
                     _("check mqtt.host, the network and DNS (`getent hosts HOST`)"), details)
    except TimeoutError as exc:
        _close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: no answer within {seconds} s").format(
                         broker=where, seconds=f"{timeout_s:g}"),
                     _("check the network path (mobile router, firewall) and mqtt.host/mqtt.port"), details)
    except OSError as exc:
        _close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: cannot connect: {error}").format(
                         broker=where, error=exc.strerror or exc),
                     _("check the network (`ip route`, `ping`) and mqtt.host"), details)
    try:
        deadline = time.monotonic() + timeout_s
        rc = mqtt.MQTT_ERR_SUCCESS
        while "reason" not in result and time.monotonic() < deadline and rc == mqtt.MQTT_ERR_SUCCESS:
            rc = client.loop(timeout=0.1)
        reason = result.get("reason")
        if reason is None:
            closed = rc != mqtt.MQTT_ERR_SUCCESS
            hint = (_("the port may expect TLS: set mqtt.tls (and the TLS port, usually 8883)") if tls is None
                    else _("is this an MQTT port? check mqtt.port"))
            what = (_("{broker}: the connection was closed before the broker answered") if closed
                    else _("{broker}: no CONNACK within {seconds} s"))
            return Check("broker", FAIL, what.format(broker=where, seconds=f"{timeout_s:g}"), hint, details)
        details["connack"] = {"value": reason.value, "reason": str(reason)}
        if reason.is_failure:
            hint = _("check the broker's log")
            if reason.value in (134, 135):
                hint = _("check mqtt.username ({username}) and the password (mqtt.password_file) for this "
                         "gateway; the broker must have this user with this password").format(username=cfg.username)
            elif reason.value == 133:
                hint = _("the broker does not accept this client id; check mqtt.client_id")
            return Check("broker", FAIL, _("{broker}: the broker refused the connection: {reason} "
                                           "(CONNACK {code})").format(broker=where, reason=reason, code=reason.value),
                         hint, details)
        sock = client.socket()
        tls_version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        details["tls_version"] = tls_version
        how = (_("TLS ({version}, certificate verified)") if tls_version else _("plain TCP")).format(
            version=tls_version)
        if tls_version and tls is not None and tls.insecure:
            how = _("TLS ({version}, host name NOT checked)").format(version=tls_version)
        user = (_("user {username}").format(username=cfg.username) if cfg.username else _("anonymous"))
        summary = _("{broker}: connected with {how}, {user}").format(broker=where, how=how, user=user)
        from agent.config import is_loopback_host  # noqa: PLC0415

        if tls is None and not is_loopback_host(cfg.host):
            # Allowed only with an explicit tls: false; still a problem to fix, not a state to call ok.
            clear = (_("{broker}: plain TCP to a broker on another machine (tls: false): the MQTT login and password "
                       "and every reading cross the network in clear") if cfg.username else
                     _("{broker}: plain TCP to a broker on another machine (tls: false): the MQTT login and every "
                       "reading cross the network in clear"))
            return Check("broker", FAIL, clear.format(broker=where),
                         _("use TLS: mqtt.tls: {{ca_file: ca.pem}} and port 8883; plain TCP only inside a trusted "
                           "private network (VPN)").format(), details)
        if tls is not None and tls.insecure:
            return Check("broker", WARN, summary, _("set mqtt.tls.insecure: false in the field"), details)
        return Check("broker", OK, summary, None, details)
    finally:
        try:
            client.disconnect()
            client.loop(timeout=0.05)
        except (OSError, ValueError):
            pass
        sock = client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------------------------
# Clock, journal, GPIO, permissions


def _check_clock(host: Host) -> Check:
    from agent.gateway import clock  # noqa: PLC0415

    now_us = host.now_us()
    # details["now"] is for machines (UTC); the summary is for the person at the gateway (local zone).
    stamp = datetime.datetime.fromtimestamp(now_us / 1e6, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    shown = local_time(now_us)
    if now_us < clock.EPOCH_FLOOR_US:
        return Check("clock", FAIL, _("the clock says {time}, before 2020: it was never set").format(time=shown),
                     _("connect the gateway to a network with NTP (UDP 123) or fit an RTC; readings are marked "
                       "'unsynced' until the clock is set"), {"now": stamp, "synced": False})
    synced = host.clock_synced()
    if synced is None:
        return Check("clock", WARN, _("{time}; whether it is synchronised cannot be asked here").format(time=shown),
                     _("check `timedatectl` (System clock synchronized: yes)"), {"now": stamp, "synced": None})
    if not synced:
        return Check("clock", WARN, _("{time}, not synchronised").format(time=shown),
                     _("enable network time (`sudo timedatectl set-ntp true`) and check the gateway reaches an NTP "
                       "server; readings are marked 'unsynced' until it syncs"), {"now": stamp, "synced": False})
    return Check("clock", OK, _("{time}, synchronised").format(time=shown), None, {"now": stamp, "synced": True})


def _journal_bytes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    return total


def _check_journal(config: Config) -> Check:
    from agent.gateway.journal import check_files  # noqa: PLC0415

    path = config.journal.path
    folder = Path(path).parent
    quota = int(config.journal.quota_mb * _MIB)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    details: dict[str, Any] = {"path": path, "quota_bytes": quota}
    try:
        check_files(path)
    except AgentError as exc:
        return Check("journal", FAIL, str(exc), _("journal.path must name the journal file itself; the agent will "
                                                  "not start on a link"), details)
    if not existing.is_dir():
        return Check("journal", FAIL, _("{path} is a file, so the journal folder {folder} cannot be made").format(
                         path=existing, folder=folder),
                     _("set journal.path to a file in a folder, e.g. /var/lib/denen/journal.db"), details)
    if not os.access(existing, os.W_OK | os.X_OK):
        what = (_("cannot write to {folder}") if existing == folder
                else _("cannot write to {path} (to create {folder})")).format(path=existing, folder=folder)
        return Check("journal", FAIL, what,
                     _("the agent's user must own the journal folder: sudo install -d -o denen -g denen {folder} "
                       "(the systemd unit's StateDirectory= does this for /var/lib/denen)").format(folder=folder),
                     details)
    if existing == folder:
        # os.access trusts mode bits only; a read-only mount or a full inode table shows up only on a real write.
        probe = folder / f".denen-doctor-{os.getpid()}"
        try:
            probe.write_bytes(b"x")
        except OSError as exc:
            return Check("journal", FAIL, _("cannot write to {folder}: {error}").format(folder=folder,
                                                                                      error=exc.strerror),
                         _("is the file system mounted read-only, or full? (`mount`, `df -h`)"), details)
        finally:
            try:
                probe.unlink()
            except OSError:
                pass
    usage = shutil.disk_usage(existing)
    size = _journal_bytes(path)
    details.update(journal_bytes=size, free_bytes=usage.free, disk_bytes=usage.total)
    mb = _MIB
    summary = _("{path}: {size} MB of {quota} MB quota; {free} MB free on disk").format(
        path=path, size=f"{size / mb:.1f}", quota=f"{quota / mb:.0f}", free=f"{usage.free / mb:.0f}")
    if existing != folder:
        summary += " " + _("({folder} will be created)").format(folder=folder)
    if usage.free < _MIN_FREE_BYTES:
        return Check("journal", FAIL, summary, _("the disk is almost full: free space (`sudo journalctl --vacuum-"
                     "size=50M`, remove old files) or use a larger SD card"), details)
    if size >= 0.9 * quota:
        return Check("journal", WARN, summary, _("the journal is near its quota and evicts telemetry soon: is the "
                     "broker reachable? (`denen status`); or raise journal.quota_mb"), details)
    if usage.free + size < quota:
        room = (usage.free + size - _MIN_FREE_BYTES) / mb
        return Check("journal", WARN, summary, _("the disk fills up before the journal reaches its quota: lower "
                     "journal.quota_mb to at most {megabytes} or free space").format(megabytes=f"{max(room, 1):.0f}"),
                     details)
    return Check("journal", OK, summary, None, details)


_GPIO_DEVICES = ("status_lamp", "siren", "test_button", "rain_gauge")


def _gpio_configured(config: Any) -> Any | None:
    """The config's gpio section when it configures at least one device, else None."""
    # Read with getattr: the section is optional, and a config without it (or with no device in it) means
    # the agent touches no GPIO at all.
    section = getattr(config, "gpio", None)
    if section is None or getattr(section, "any_device", True) is False:
        return None
    return section


def _named_factory(name: str) -> Any:
    """A gpiozero pin factory by its entry-point name (``lgpio``, ``rpigpio``...); ``mock`` is MockFactory."""
    from importlib.metadata import entry_points  # noqa: PLC0415

    if name == "mock":
        from gpiozero.pins.mock import MockFactory  # noqa: PLC0415

        return MockFactory()
    eps = {ep.name: ep for ep in entry_points(group="gpiozero_pin_factories")}
    ep = eps.get(name) or eps.get(name.lower())
    if ep is None:
        raise ImportError(f"pin factory {name!r} is not installed (installed: {', '.join(sorted(eps)) or 'none'})")
    return ep.load()()


def _check_gpio(config: Any) -> Check:
    section = _gpio_configured(config)
    if section is None:
        return Check("gpio", SKIP, _("not configured (no gpio devices in the config)"))
    devices = {k: str(getattr(getattr(section, k, None), "pin", "")) for k in _GPIO_DEVICES
               if getattr(section, k, None) is not None}
    wanted = getattr(section, "pin_factory", None)
    try:
        from gpiozero import Device  # noqa: PLC0415
    except ImportError as exc:
        return Check("gpio", FAIL, f"gpiozero cannot be imported: {exc}",
                     "reinstall the agent: /opt/denen/venv/bin/pip install gpiozero")
    hint = ("on a Raspberry Pi: sudo apt install python3-lgpio, and a venv made with --system-site-packages "
            "(deploy/edge/install.sh does both); elsewhere set gpio.pin_factory: mock")
    saved = Device.pin_factory
    made = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                # Backends raise their own types when the hardware or library is missing (ImportError, OSError,
                # lgpio.error, gpiozero's BadPinFactory ...): every one of them means "no GPIO here".
                made = _named_factory(wanted) if wanted else (saved or Device._default_pin_factory())
            except Exception as exc:  # noqa: BLE001 - see above; reported, never raised
                tried = "; ".join(str(w.message) for w in caught)
                return Check("gpio", FAIL, _("no GPIO pin factory works: {error}").format(
                                 error=f"{type(exc).__name__}: {exc}"), hint,
                             {"tried": tried, "devices": devices})
        kind = type(made).__name__
        details: dict[str, Any] = {"pin_factory": kind, "devices": devices}
        pins = ", ".join(f"{k} {v}" for k, v in devices.items())
        if kind == "MockFactory":
            asked = _("as the config asks (gpio.pin_factory: mock)") if wanted == "mock" else "GPIOZERO_PIN_FACTORY"
            return Check("gpio", WARN, _("simulated pins (MockFactory, {why}): {pins} reach no real hardware").format(
                             why=asked, pins=pins),
                         _("on a gateway remove gpio.pin_factory: mock (and GPIOZERO_PIN_FACTORY)"), details)
        chips = sorted(glob.glob("/dev/gpiochip*"))
        blocked = [c for c in chips if not os.access(c, os.R_OK | os.W_OK)]
        details["chips"] = chips
        if blocked:
            return Check("gpio", FAIL, _("pin factory {factory}, but {devices} cannot be opened").format(
                             factory=kind, devices=", ".join(blocked)),
                         _("add the user to the gpio group: sudo usermod -aG gpio $USER (then log out and in)"),
                         details)
        try:
            board = str(made.board_info.model)
        except (AttributeError, OSError, RuntimeError, ValueError):
            board = _("unknown board")
        return Check("gpio", OK, _("pin factory {factory} on {board}: {pins}").format(factory=kind, board=board,
                                                                                      pins=pins), None, details)
    finally:
        if made is not None and made is not saved:
            made.close()
        Device.pin_factory = saved


def _check_permissions(config: Config, host: Host) -> Check:
    if host.euid() == 0:
        return Check("permissions", OK, _("running as root (the service runs as user denen with the dialout and "
                                          "gpio groups its unit gives it)"))
    user = host.user()
    groups = host.groups()
    devices = [r.port for r in config.radios if "://" not in r.port and os.path.exists(r.port)]
    needs = ["dialout"] if any("://" not in r.port for r in config.radios) else []
    if _gpio_configured(config) is not None and getattr(config.gpio, "pin_factory", None) != "mock":
        needs.append("gpio")
    missing = [g for g in needs if g not in groups]
    blocked = [d for d in devices if not os.access(os.path.realpath(d), os.R_OK | os.W_OK)]
    details = {"user": user, "groups": sorted(groups), "missing_groups": missing, "blocked_devices": blocked}
    fix = _("sudo usermod -aG {groups} {user} (then log out and in)").format(
        groups=",".join(missing or ["dialout"]), user=user)
    if blocked:
        return Check("permissions", FAIL, _("user {user} cannot open {devices}").format(
            user=user, devices=", ".join(blocked)), fix, details)
    if missing:
        return Check("permissions", WARN, _("user {user} is not in group(s) {groups}").format(
            user=user, groups=", ".join(missing)), fix, details)
    have = ", ".join(needs) if needs else _("no device groups needed")
    return Check("permissions", OK, _("user {user}: {groups}").format(user=user, groups=have), None, details)


# ---------------------------------------------------------------------------------------------------------------
# Putting it together


def _running_agent(config: Config) -> int | None:
    """Pid of the running agent of this config, from its journal; None if not running (or no journal)."""
    from agent.tools import status  # noqa: PLC0415

    if not os.path.exists(config.journal.path):
        return None
    try:
        agent = status.collect(config.journal.path)["agent"]
    except AgentError:
        return None
    return agent["pid"] if agent.get("running") and agent["pid"] != os.getpid() else None


def run_checks(config_path: str | None, *, timeout_s: float = 3.0, host: Host | None = None,
               search: Sequence[str] | None = None, state_dir: str | None = None) -> list[Check]:
    """Run every check and return the results in display order.

    Args:
        config_path: the config to check; None checks the config the agent would run (flashed or default).
        timeout_s: longest wait for each module reply and for the broker, in seconds.
        host: operating-system answers (tests replace some).
        search: flashed-bundle search paths when ``config_path`` is None.
        state_dir: the agent's state folder when ``config_path`` is None.
    """
    from agent.config import load_config  # noqa: PLC0415
    from agent.tools.flash import resolve_active_config  # noqa: PLC0415

    host = host or Host()
    try:
        active = resolve_active_config(config_path, search, state_dir=state_dir, install=False)
    except AgentError as exc:
        message, hint = _split_hint(str(exc))
        return [Check("config", FAIL, message, hint)]
    try:
        # A card's own copy shows every file as readable by all (FAT): its modes say nothing.
        config = load_config(active.path, check_modes=not active.on_card)
    except ConfigError as exc:
        return [Check("config", FAIL, _("{path} is invalid ({count} problem(s))").format(
                          path=active.path, count=len(exc.issues)),
                      _("fix these lines (denen config validate shows the same): {issues}").format(
                          issues="; ".join(map(str, exc.issues))),
                      {"issues": [str(i) for i in exc.issues]})]
    details = asdict(active)
    summary = _("{path} ({source}), gateway {gateway}, sha256 {digest}").format(
        path=active.path, source=active.source, gateway=config.gateway.id, digest=active.sha256[:12])
    warns = [str(w) for w in getattr(config, "warnings", ())]
    if warns:
        checks = [Check("config", WARN, summary, "; ".join(warns), details)]
    elif active.problems:
        checks = [Check("config", WARN, summary + "; " + "; ".join(active.problems),
                        _("flash the config again (denen flash CONFIG TARGET); until then the config above runs"),
                        details)]
    else:
        checks = [Check("config", OK, summary, None, details)]

    agent_pid = _running_agent(config)
    for radio in config.radios:
        checks.append(_check_radio(radio, timeout_s, host, agent_pid))
    checks.append(_check_broker(config, timeout_s))
    checks.append(_check_clock(host))
    checks.append(_check_journal(config))
    checks.append(_check_gpio(config))
    checks.append(_check_permissions(config, host))
    return checks


def _split_hint(text: str) -> tuple[str, str | None]:
    """An error's message and its ``(hint: ...)`` tail, in English or in the language in use."""
    for marker in {" (hint: ", _(" (hint: ")}:
        if marker in text:
            message, hint = text.split(marker, 1)
            return message, hint.rstrip(")）")
    return text, None


def exit_code(checks: Sequence[Check]) -> int:
    """0 when every check is ok or skipped, 1 with warnings, 2 with failures."""
    return max((_EXIT[c.status] for c in checks), default=0)


def to_json(checks: Sequence[Check]) -> dict[str, Any]:
    """The ``--json`` document."""
    code = exit_code(checks)
    return {"schema": DOCTOR_SCHEMA, "status": {0: OK, 1: WARN, 2: FAIL}[code], "exit_code": code,
            "checks": [asdict(c) for c in checks]}


_STYLE = {OK: (N_("ok"), "green"), WARN: (N_("warn"), "yellow"), FAIL: (N_("FAIL"), "bold red"),
          SKIP: (N_("skip"), "dim")}
#: The checks' names (machine-readable in ``--json``) as the table shows them.
_CHECK_NAMES = {"config": N_("config"), "broker": N_("broker"), "clock": N_("clock"), "journal": N_("journal"),
                "gpio": N_("gpio"), "permissions": N_("permissions")}


def _check_label(name: str) -> str:
    if name.startswith("radio "):
        return _("radio {name}").format(name=name.removeprefix("radio "))
    return _(_CHECK_NAMES[name]) if name in _CHECK_NAMES else name


def render(checks: Sequence[Check], console: Any) -> None:
    """Print the checks as one table: status, check, what was found, and how to fix it."""
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table(title="denen doctor", show_lines=True, expand=True)
    table.add_column("", no_wrap=True)
    table.add_column(_("check"), no_wrap=True)
    # Japanese has no spaces to wrap at: a long run folds at the cell edge instead of being cut with "…".
    table.add_column(_("result"), ratio=3, overflow="fold")
    table.add_column(_("fix"), ratio=2, overflow="fold")
    for c in checks:
        label, style = _STYLE[c.status]
        table.add_row(Text(_(label), style=style), Text(_check_label(c.name)), Text(c.summary),
                      Text(c.hint or "", style="italic"))
    console.print(table)
    code = exit_code(checks)
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    if code == 0:
        console.print(Text(_("all checks passed"), style="green"))
    else:
        console.print(Text(_("{failures} failure(s), {warnings} warning(s)").format(failures=fails, warnings=warns),
                           style="bold"),
                      Text(_("(exit code {code})").format(code=code)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``denen doctor``."""
    parser.add_argument("-c", "--config", default=None,
                        help=_("config file (default: the config the agent would run: flashed, installed or "
                               "/etc/denen/config.yaml)"))
    parser.add_argument("--json", action="store_true",
                        help=_("print the results as JSON (English, times in UTC)"))
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S",
                        help=_("longest wait for a module reply and for the broker, in seconds (default 3)"))


def main(args: argparse.Namespace) -> int:
    """``denen doctor``: prints the checks and returns 0 (all ok), 1 (warnings) or 2 (failures)."""
    if args.timeout <= 0:
        raise AgentError(_("--timeout must be positive (hint: e.g. --timeout 3)"))
    checks = run_checks(args.config, timeout_s=args.timeout)
    if args.json:
        print(json.dumps(to_json(checks), indent=2, ensure_ascii=False))
    else:
        from rich.console import Console  # noqa: PLC0415

        render(checks, Console())
    return exit_code(checks)


def _standalone() -> int:
    parser = argparse.ArgumentParser(prog="denen doctor", description=_("check that this gateway can work"))
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(parser.parse_args())
    except AgentError as exc:
        print(_("denen: error: {message}").format(message=exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_standalone())
