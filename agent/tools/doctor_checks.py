"""The checks of ``denen doctor``, one function each: a radio (through its driver's probe), the broker, the clock,
the journal, GPIO and permissions. Each returns a :class:`Check`; none raises for what it finds.

Top-level imports stay light (the CLI imports this module to build its parser): config models (pydantic), the
journal, ctypes (clock), paho, socket, ssl, serial and the drivers load inside the checks that use them.
"""

from __future__ import annotations

import datetime
import glob
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError, ConfigError
from agent.i18n import _, local_time
from agent.tools.doctor_host import Host, process_name

if TYPE_CHECKING:
    from agent.config import Config, RadioConfig

__all__ = ["FAIL", "OK", "SKIP", "WARN", "Check", "check_broker", "check_clock", "check_gpio", "check_journal",
           "check_permissions", "check_radio", "journal_bytes"]

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
_MIB = 1024 * 1024
#: Below this much free space the journal cannot grow even for an SOS; a hard failure.
_MIN_FREE_BYTES = 64 * _MIB
_SERIAL_GLOBS = ("/dev/lora*", "/dev/ttyUSB*", "/dev/ttyACM*", "/dev/ttyAMA*", "/dev/serial/by-id/*")


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


# ---------------------------------------------------------------------------------------------------------------
# Radios


def _present_ports() -> list[str]:
    found: list[str] = []
    for pattern in _SERIAL_GLOBS:
        found.extend(sorted(glob.glob(pattern)))
    return found


def check_radio(radio: RadioConfig, timeout_s: float, host: Host, agent_pid: int | None) -> Check:
    """The radio's port is present, free and usable, and its module answers its driver's probe."""
    return _port_problem(radio, host, agent_pid) or _probe_module(radio, timeout_s)


def _port_problem(radio: RadioConfig, host: Host, agent_pid: int | None) -> Check | None:
    """Why the radio's port is not probed (a test port, the running agent's, missing, busy, forbidden), or None."""
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
            who = ", ".join(f"{pid} ({process_name(pid)})" for pid in holders)
            return Check(name, WARN, _("{port} is busy: held open by pid {holders}; not probed").format(
                             port=url, holders=who),
                         _("close the other program (a terminal such as screen or minicom, another denen, "
                           "ModemManager) and run doctor again"), {"holders": holders})
        if not os.access(os.path.realpath(url), os.R_OK | os.W_OK):
            return Check(name, FAIL, _("{port}: permission denied").format(port=url),
                         _("add the user to the serial port's group: sudo usermod -aG dialout {user} "
                           "(then log out and in)").format(user=host.user()))
    return None


def _probe_module(radio: RadioConfig, timeout_s: float) -> Check:
    """Open the port and run the driver's probe (see :mod:`drivers.probe`)."""
    import serial  # noqa: PLC0415

    from drivers import registry  # noqa: PLC0415

    name = f"radio {radio.name}"
    url = radio.port
    is_device = "://" not in url
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
        probe = registry.DRIVERS[radio.driver].probe if radio.driver in registry.names() else None
        if probe is None:
            return Check(name, SKIP, _("{port} opens; no probe for driver {driver}").format(
                port=url, driver=radio.driver))
        found = probe(port, radio, timeout_s, _)
        return Check(name, found.status, found.summary, found.hint, found.details)
    except (serial.SerialException, OSError) as exc:
        return Check(name, FAIL, _("{port}: failed while probing: {error}").format(port=url, error=exc),
                     _("the port vanished or errored: check the cable and `dmesg | tail`"))
    finally:
        port.close()


# ---------------------------------------------------------------------------------------------------------------
# Broker


def check_broker(config: Config, timeout_s: float) -> Check:
    """The broker is reachable with the config's TLS settings and credentials, and says yes (its CONNACK)."""
    cfg = config.mqtt
    where = f"{cfg.host}:{cfg.port}"
    tls = cfg.tls_settings()
    details: dict[str, Any] = {"host": cfg.host, "port": cfg.port, "tls": tls is not None,
                               "username": cfg.username}
    made = _broker_client(config, timeout_s, details)
    if isinstance(made, Check):
        return made
    client, result = made
    failed = _connect(client, cfg, where, timeout_s, details)
    if failed is not None:
        return failed
    try:
        return _broker_answer(client, cfg, where, timeout_s, result, details)
    finally:
        _close_client(client)


def _broker_client(config: Config, timeout_s: float, details: dict[str, Any]) -> Check | tuple[Any, dict[str, Any]]:
    """A paho client with the config's credentials and TLS, and the dict its CONNACK lands in; or the failure."""
    import ssl  # noqa: PLC0415

    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

    cfg = config.mqtt
    tls = cfg.tls_settings()
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
    return client, result


def _connect(client: Any, cfg: Any, where: str, timeout_s: float, details: dict[str, Any]) -> Check | None:
    """Open the connection (TCP, TLS handshake, CONNECT sent); None when it is open, else the failure."""
    import socket  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    from agent.gateway.publisher import close_sockets_left_in  # noqa: PLC0415 - paho; the caller imported it already

    try:
        client.connect(cfg.host, cfg.port, keepalive=max(5, int(timeout_s) + 5), clean_start=True)
        return None
    except ssl.SSLCertVerificationError as exc:
        close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: the broker's TLS certificate is not trusted: {error}").format(
                         broker=where, error=exc.verify_message),
                     _("mqtt.tls.ca_file must be the CA that signed the broker's certificate, and mqtt.host must be "
                       "a name (or IP) the certificate lists"), details)
    except ssl.SSLError as exc:
        close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: TLS handshake failed: {error}").format(
                         broker=where, error=exc.reason or exc),
                     _("is this the broker's TLS port (usually 8883)? does it require a client certificate "
                       "(mqtt.tls.cert_file/key_file)?"), details)
    except ConnectionRefusedError as exc:
        close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: connection refused").format(broker=where),
                     _("no broker listens there: check mqtt.host and mqtt.port, and that the broker runs"), details)
    except socket.gaierror as exc:
        return Check("broker", FAIL, _("{broker}: cannot resolve host name ({error})").format(
                         broker=where, error=exc.strerror),
                     _("check mqtt.host, the network and DNS (`getent hosts HOST`)"), details)
    except TimeoutError as exc:
        close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: no answer within {seconds} s").format(
                         broker=where, seconds=f"{timeout_s:g}"),
                     _("check the network path (mobile router, firewall) and mqtt.host/mqtt.port"), details)
    except OSError as exc:
        close_sockets_left_in(exc)
        return Check("broker", FAIL, _("{broker}: cannot connect: {error}").format(
                         broker=where, error=exc.strerror or exc),
                     _("check the network (`ip route`, `ping`) and mqtt.host"), details)


def _broker_answer(client: Any, cfg: Any, where: str, timeout_s: float, result: dict[str, Any],
                   details: dict[str, Any]) -> Check:
    """Wait for the CONNACK and judge it: refused, or accepted over a connection that is or is not safe."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415

    tls = cfg.tls_settings()
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
    return _connected(client, cfg, where, details)


def _connected(client: Any, cfg: Any, where: str, details: dict[str, Any]) -> Check:
    """The broker said yes: ok, unless the connection is not safe for the field."""
    import ssl  # noqa: PLC0415

    from agent.config import is_loopback_host  # noqa: PLC0415

    tls = cfg.tls_settings()
    sock = client.socket()
    tls_version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
    details["tls_version"] = tls_version
    how = (_("TLS ({version}, certificate verified)") if tls_version else _("plain TCP")).format(
        version=tls_version)
    if tls_version and tls is not None and tls.insecure:
        how = _("TLS ({version}, host name NOT checked)").format(version=tls_version)
    user = (_("user {username}").format(username=cfg.username) if cfg.username else _("anonymous"))
    summary = _("{broker}: connected with {how}, {user}").format(broker=where, how=how, user=user)
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


def _close_client(client: Any) -> None:
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


def check_clock(host: Host) -> Check:
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


def journal_bytes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    return total


def check_journal(config: Config) -> Check:
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
    size = journal_bytes(path)
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


def check_gpio(config: Any) -> Check:
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


def check_permissions(config: Config, host: Host) -> Check:
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


