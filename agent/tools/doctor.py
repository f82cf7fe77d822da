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
radios are not probed; a port another program holds open is reported as busy, not opened. Each radio is probed by
its driver's own probe (``DriverSpec.probe``, see drivers/probe.py): short, and it only asks, changing nothing the
module keeps. The broker
connection uses its own client id (``<client id>-doctor-<pid>``) and no Last Will, so the gateway's own session
and its online/offline status are left alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError, ConfigError
from agent.i18n import N_, _
from agent.tools.doctor_checks import (
    FAIL,
    OK,
    SKIP,
    WARN,
    Check,
    check_broker,
    check_clock,
    check_gpio,
    check_journal,
    check_permissions,
    check_radio,
)
from agent.tools.doctor_host import Host

# The CLI imports this module to build its parser: config models (pydantic), the journal, ctypes (clock), socket,
# ssl and the drivers load inside the checks that use them (agent/tools/doctor_checks.py, doctor_host.py).
if TYPE_CHECKING:
    from agent.config import Config

__all__ = ["add_arguments", "exit_code", "main", "render", "run_checks", "to_json"]

log = logging.getLogger(__name__)

_EXIT = {OK: 0, SKIP: 0, WARN: 1, FAIL: 2}
DOCTOR_SCHEMA = "denen.doctor/1"


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
    from agent.gateway.boot import resolve_active_config  # noqa: PLC0415

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
        checks.append(check_radio(radio, timeout_s, host, agent_pid))
    checks.append(check_broker(config, timeout_s))
    checks.append(check_clock(host))
    checks.append(check_journal(config))
    checks.append(check_gpio(config))
    checks.append(check_permissions(config, host))
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
