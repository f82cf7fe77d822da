"""``denen console`` and ``denen ack``: the argument parsers and what they run.

Kept light at import (argparse only): ``agent.cli`` builds every parser at start-up.

``denen ack`` exit codes: 0 the gateway carried the command out (``stopped``, ``already_acknowledged``,
``silenced``, ``chirped``); 1 the gateway answered that nothing changed (``not_active``, ``not_sounding``,
``no_siren``, ``no_outputs``, ``invalid``); 2 no answer (broker unreachable or refused, or ``--wait`` passed) or a
config error. ``denen ack link`` prints the URL and exits 0.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import re
import signal
import socket
import sys
import threading
from typing import Any

from agent.i18n import _

__all__ = ["ack_main", "add_ack_arguments", "add_console_arguments", "console_main", "parse_duration"]

log = logging.getLogger("denen.console")

DEFAULT_CONFIG = "/etc/denen/console.yaml"
#: Outcomes that mean the gateway did what was asked.
DONE_OUTCOMES = frozenset({"stopped", "already_acknowledged", "silenced", "chirped"})
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``2d`` -> seconds (argparse type)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(_("'{text}' is not a duration like 90s, 15m, 24h or 2d").format(text=text))
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def add_console_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"console config file (YAML), e.g. config/console/console.yaml; default {DEFAULT_CONFIG}")


def add_ack_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ack_cmd", required=True, metavar="ACTION")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=_("console config file (its mqtt login, link secret and sink); default {path}").format(
                            path=DEFAULT_CONFIG))

    def wait(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--wait", type=parse_duration, default=60.0,
                        help=_("how long to keep sending until the gateway answers (default 60s)"))

    def action(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=_("Example:") + f"\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    link = action("link", _("print a signed link to an alert's acknowledgement page"),
                  "denen ack link gw-okutama-01 sos:00a1b2c3 --ttl 24h --to 山田 -c /etc/denen/console.yaml")
    link.add_argument("gateway", help=_("gateway id, e.g. gw-okutama-01"))
    link.add_argument("key", help=_("alert key <type>:<node>, e.g. sos:00a1b2c3"))
    link.add_argument("--ttl", type=parse_duration, default=None,
                      help=_("how long the link is valid, e.g. 24h (default: links.ttl_s of the config)"))
    link.add_argument("--to", default=None, help=_("who the link is for (the page's default name)"))
    common(link)

    ack = action("ack", _("acknowledge an alert: the gateway stops repeating it"),
                 'denen ack ack gw-okutama-01 sos:00a1b2c3 --by "山田" -c /etc/denen/console.yaml')
    ack.add_argument("gateway")
    ack.add_argument("key", help=_("alert key <type>:<node>, e.g. sos:00a1b2c3"))
    ack.add_argument("--by", required=True,
                     help=_("who acknowledges (written to the audit and the gateway's log)"))
    common(ack)
    wait(ack)

    sil = action("silence", _("silence the siren for one alert (a new alert sounds it again)"),
                 'denen ack silence gw-kiso-river-02 river_stage:00000301 --by "山田" -c /etc/denen/console.yaml')
    sil.add_argument("gateway")
    sil.add_argument("key", help=_("alert key the siren sounds for, e.g. river_stage:00000301"))
    sil.add_argument("--by", required=True, help=_("who silences it"))
    common(sil)
    wait(sil)

    chirp = action("test-chirp", _("run the gateway's installer self-test chirp"),
                   'denen ack test-chirp gw-kiso-river-02 --by "山田" -c /etc/denen/console.yaml')
    chirp.add_argument("gateway")
    chirp.add_argument("--by", required=True, help=_("who runs it"))
    common(chirp)
    wait(chirp)


def console_main(args: argparse.Namespace) -> int:
    from agent import __version__  # noqa: PLC0415
    from agent.console.config import load_console_config  # noqa: PLC0415
    from agent.console.service import ConsoleService  # noqa: PLC0415

    cfg = load_console_config(args.config)
    logging.getLogger().setLevel(getattr(logging, cfg.log.level.upper()))
    service = ConsoleService(cfg)

    def handler(signum: int, frame: Any) -> None:
        log.info("%s", _("signal {signal}: stopping the console").format(signal=signum))
        service.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    log.info("%s", _("denen {version} console: config {path}").format(version=__version__, path=args.config))
    service.run()
    return 0


def ack_main(args: argparse.Namespace) -> int:
    from agent.console.config import load_console_config  # noqa: PLC0415
    from agent.console.links import GATEWAY_RE, KEY_RE, LinkSigner, clean_by  # noqa: PLC0415

    cfg = load_console_config(args.config)
    if not GATEWAY_RE.match(args.gateway):
        print(_("denen: error: '{gateway}' is not a gateway id (lower-case letters, digits, '_' and '-')").format(
            gateway=args.gateway), file=sys.stderr)
        return 2
    key = getattr(args, "key", None)
    if key is not None and not KEY_RE.match(key):
        print(_("denen: error: '{key}' is not an alert key (<type>:<node>, e.g. sos:00a1b2c3)").format(key=key),
              file=sys.stderr)
        return 2
    if args.ack_cmd == "link":
        signer = LinkSigner(cfg.links.secret())
        try:
            token = signer.sign(args.gateway, key, args.ttl or cfg.links.ttl_s, recipient=args.to)
        except ValueError as exc:
            print(_("denen: error: {message}").format(message=exc), file=sys.stderr)
            return 2
        print(f"{cfg.http.public_url}/a/{token}")
        return 0
    by = clean_by(args.by)
    if by is None:
        print(_("denen: error: --by is 1..100 characters without control characters"), file=sys.stderr)
        return 2
    action = {"ack": "ack", "silence": "silence", "test-chirp": "test"}[args.ack_cmd]
    return _command(cfg, action, args.gateway, key, by, args.wait)


def _command(cfg: Any, action: str, gateway: str, key: str | None, by: str, wait_s: float) -> int:
    import os  # noqa: PLC0415

    from agent.bridge.registry import GatewayRegistry  # noqa: PLC0415
    from agent.console.audit import Action, Audit, now_us  # noqa: PLC0415
    from agent.console.commands import CommandLink, new_request_id  # noqa: PLC0415
    from agent.console.config import CommandsConfig  # noqa: PLC0415
    from agent.console.service import ACTION_COMMANDS, command_doc  # noqa: PLC0415
    from agent.console.state import StateBook  # noqa: PLC0415

    registry = (GatewayRegistry.load(cfg.gateways.file, unknown=cfg.gateways.unknown)
                if cfg.gateways is not None else GatewayRegistry())
    audit = Audit(cfg.sink, registry)
    states = StateBook()
    commands = CommandsConfig(retry_s=min(cfg.commands.retry_s, wait_s), give_up_s=wait_s)
    finished = threading.Event()
    link = CommandLink(cfg.mqtt, commands, states=states, on_done=lambda item: finished.set(),
                       client_id=f"{cfg.mqtt.effective_client_id()}-cli-{os.getpid()}")
    audit.start()
    link.start()
    try:
        if not link.wait_ready(min(wait_s, 15.0)):
            print(_("denen: error: could not connect to the broker {broker} as {user} and subscribe (see the log "
                    "above); nothing was sent").format(broker=f"{cfg.mqtt.host}:{cfg.mqtt.port}",
                                                       user=cfg.mqtt.username or _("(anonymous)")),
                  file=sys.stderr)
            return 2
        alert, kind, node = _concerned(states, gateway, key)
        request_id = new_request_id()
        record = Action(action=action, gateway=gateway, by=by,
                        from_ip=f"cli:{getpass.getuser()}@{socket.gethostname()}", request_id=request_id,
                        ts_us=now_us(), type=kind, node=node, alert_id=alert.id if alert else None,
                        since_us=alert.since_us if alert else None)
        audit.record(record)
        item = link.submit(gateway, ACTION_COMMANDS[action], command_doc(action, key, by, "cli"),
                           request_id=request_id)
        print(_("sent {command} to {gateway} (request {request}); waiting up to {seconds} s for the answer").format(
            command=item.command, gateway=gateway, request=request_id, seconds=f"{wait_s:g}"))
        finished.wait(wait_s + 5)
        return _answer(item, record, audit, gateway, wait_s)
    finally:
        link.stop()
        audit.stop()


def _concerned(states: Any, gateway: str, key: str | None) -> tuple[Any, str | None, str | None]:
    """(alert, type, node) a command on ``key`` concerns, for the audit: the retained state says which raise
    this is; a command is sent without it too (alert None, type and node read from the key)."""
    state = states.wait_for(gateway, 2.0)
    alert = state.alerts.get(key) if state is not None and key is not None else None
    if alert is not None:
        return alert, alert.type, alert.node or gateway
    if key is not None:
        kind, _sep, node = key.partition(":")
        return None, kind, node or gateway
    return None, None, None


def _answer(item: Any, record: Any, audit: Any, gateway: str, wait_s: float) -> int:
    """The gateway's answer to a sent command, printed and audited; the exit code."""
    if item.result is None:
        audit.record_result(record, "timeout")
        print(_("no answer from {gateway} after {sends} sends in {seconds} s: the gateway is offline or does not "
                "get its commands; nothing is known to have changed").format(
                  gateway=gateway, sends=item.sends, seconds=f"{wait_s:g}"), file=sys.stderr)
        return 2
    outcomes = [o for _target, o in item.result.results]
    audit.record_result(record, ",".join(outcomes))
    for target, outcome in item.result.results:
        print(f"{gateway}: {target + ': ' if target else ''}{outcome}")
    return 0 if outcomes and all(o in DONE_OUTCOMES for o in outcomes) else 1
