"""``denen demo``: a simulated forest and river -> the agent -> a real MQTT broker -> a live terminal view.

Everything runs on this machine: the radio modules are simulators on real ptys (the scenario
config/scenarios/demo.yaml), the agent runs config/demo.yaml with its ports, journal and broker port pointed at a
scratch folder, and the broker is the system's Mosquitto started on a free loopback port. The three files are
package data (:mod:`agent.assets`), so the demo runs from an installed wheel as from a checkout.

config/demo.yaml keeps its node keys out of the file, as a real gateway config should: each node names an
environment variable (``key_env:``). The demo sets those variables in its own process, where the agent runs, from
config/example-keys.env (public example keys, in the format of systemd's EnvironmentFile=).

Whatever ends the demo (its duration, Ctrl-C, SIGTERM, a failure while starting), it stops what it started: the
broker, the simulators and the agent.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from agent import assets
from agent.errors import AgentError
from agent.i18n import N_, _

#: The public example keys of the example configs, as NAME=value lines (systemd EnvironmentFile= format).
EXAMPLE_KEYS: Traversable = assets.find(assets.EXAMPLE_KEYS)

_ENV_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def read_env_file(path: str | os.PathLike[str] | Traversable = EXAMPLE_KEYS) -> dict[str, str]:
    """Read ``NAME=value`` lines (blank lines and ``#`` comments skipped; a value may be in quotes).

    Args:
        path: The file, by default the shipped config/example-keys.env.

    Returns:
        The variables, in file order. The values are secrets in general: never log them.

    Raises:
        AgentError: the file cannot be read, or a line is not ``NAME=value`` (its number is given, not its text).
    """
    try:
        source = path if isinstance(path, Traversable) else Path(path)
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AgentError(_("cannot read {path}: {error}").format(path=path, error=exc.strerror)) from None
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        m = _ENV_LINE.match(text)
        if m is None:
            raise AgentError(_("{path}:{line}: not a NAME=value line (NAME in upper case)").format(path=path,
                                                                                                  line=number))
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[m.group(1)] = value
    return found


class _Stop(Exception):
    """SIGTERM or SIGINT while the demo starts: unwind through the clean-up."""


def run_demo(*, duration: float | None = None, workdir: str | None = None) -> int:
    """Run the demo until Ctrl-C, SIGTERM or ``duration`` seconds (None: no limit); returns an exit code.

    Raises:
        AgentError: Mosquitto is not installed, it did not start, or no reading reached the broker (the agent
            log says why).
    """
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        raise AgentError(_("denen demo needs Mosquitto, the MQTT broker, which is not installed "
                           "(hint: sudo apt-get install mosquitto; the demo starts its own on a free port)"))
    done = threading.Event()
    phase = {"starting": True}

    def on_signal(signum: int, frame: Any) -> None:
        done.set()
        if phase["starting"]:
            raise _Stop  # out of whatever start-up step is waiting, into the clean-up

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    started: list[tuple[str, Any]] = []  # (what, its stop function), stopped in reverse order
    try:
        return _run(Path(workdir or tempfile.mkdtemp(prefix="denen-demo-")), duration, done, started, phase)
    except _Stop:
        return 130
    except OSError as exc:  # a work folder it cannot use, no pty left, ...: one line, after the clean-up
        where = f" ({exc.filename})" if exc.filename else ""
        raise AgentError(_("the demo could not run: {error}{where} (hint: --workdir a folder you may write, or "
                           "leave it out for a new temporary one)").format(error=exc.strerror or exc, where=where)
                         ) from None
    finally:
        # Signals now only set `done`: a second Ctrl-C must not cut the clean-up short and leave the broker.
        phase["starting"] = False
        log = logging.getLogger("denen.demo")
        for what, stop in reversed(started):
            try:
                stop()
            except Exception:  # noqa: BLE001 - the others must still be stopped
                log.exception("%s", _("demo: stopping the {part} failed").format(part=_(what)))
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _run(work: Path, duration: float | None, done: threading.Event, started: list[tuple[str, Any]],
         phase: dict[str, bool]) -> int:
    """Start the broker, the simulators, the live view and the agent (each put on ``started`` as it comes up),
    then show the view until ``done`` or ``duration`` seconds."""
    from rich.console import Console  # noqa: PLC0415

    from agent.config import load_config  # noqa: PLC0415
    from agent.dev.devbroker import Mosquitto  # noqa: PLC0415
    from agent.dev.liveview import LiveView  # noqa: PLC0415
    from agent.gateway import clock  # noqa: PLC0415
    from agent.gateway.core import Gateway  # noqa: PLC0415
    from drivers.sim.scenario import Scenario  # noqa: PLC0415 - simulators only load for the demo

    work.mkdir(parents=True, exist_ok=True)
    console = Console()
    log_file = _log_to_file(work / "agent.log", started)
    broker = Mosquitto(work / "broker")
    started.append((N_("broker"), broker.stop))  # stop() also ends a broker whose start timed out
    broker.start()
    with assets.as_file(assets.DEMO_SCENARIO) as scenario_file:
        scenario = Scenario.from_file(scenario_file, link_dir=work / "sim")
    started.append((N_("simulators"), scenario.stop))  # its modules hold ptys from here on
    # The agent runs in this process: its key_env variables are this process's environment. The file's values
    # win over any already set, since they must match the simulated nodes' keys.
    os.environ.update(read_env_file(EXAMPLE_KEYS))
    # Simulated hardware on the host's clock: trust it (a container or CI host runs no NTP, and the agent would
    # otherwise hold telemetry waiting for a sync that never comes).
    clock.trust_wall_clock()
    with assets.as_file("config/demo.yaml") as config_file:
        cfg = load_config(config_file)
    cfg = cfg.model_copy(update={
        "mqtt": cfg.mqtt.model_copy(update={"port": broker.port}),
        "journal": cfg.journal.model_copy(update={"path": str(work / "journal.db")}),
        "radios": [r.model_copy(update={"port": str(work / "sim" / r.name)}) for r in cfg.radios],
    })
    scenario.start()
    view = LiveView(broker.host, broker.port, prefix=cfg.mqtt.topic_prefix)
    started.append((N_("live view"), view.close))
    gw = Gateway(cfg)
    started.append((N_("agent"), gw.stop))
    gw.start()
    phase["starting"] = False
    console.print("[bold]denen demo[/]: " + _("broker {broker}, modules {modules}; agent log {log}. Ctrl-C stops.")
                  .format(broker=f"127.0.0.1:{broker.port}", log=log_file,
                          modules=", ".join(_("{name} at {path}").format(name=n, path=m.path)
                                            for n, m in scenario.modules.items())), markup=True, highlight=False)
    _show(view, console, done, duration)
    console.print(_("journal {path}: inspect with  denen status -j {journal}").format(
        path=cfg.journal.path, journal=work / "journal.db"))
    if view.state.readings == 0:
        raise AgentError(_("no reading reached the broker; see {log}").format(log=log_file))
    return 0


def _log_to_file(log_file: Path, started: list[tuple[str, Any]]) -> Path:
    """The agent's log into ``log_file`` instead of the terminal, which the live view owns; the user can read it
    afterwards."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(log_file)
    started.append(("agent log", lambda: (root.removeHandler(handler), handler.close())))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return log_file


def _show(view: Any, console: Any, done: threading.Event, duration: float | None) -> None:
    """The live view, redrawn twice a second, until ``done`` or ``duration`` seconds."""
    from rich.live import Live  # noqa: PLC0415

    deadline = None if duration is None else time.monotonic() + duration
    with Live(view.render(), console=console, refresh_per_second=2, transient=False) as live:
        while not done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            done.wait(0.5)
            live.update(view.render())
