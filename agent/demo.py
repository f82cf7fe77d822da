"""``denen demo``: a simulated forest and river -> the agent -> a real MQTT broker -> a live terminal view.

Everything runs on this machine: the radio modules are simulators on real ptys (config/scenarios/demo.yaml), the
agent runs config/demo.yaml with its ports, journal and broker port pointed at a scratch folder, and the broker
is the system's Mosquitto started on a free loopback port.

config/demo.yaml keeps its node keys out of the file, as a real gateway config should: each node names an
environment variable (``key_env:``). The demo sets those variables in its own process, where the agent runs, from
config/example-keys.env (public example keys, in the format of systemd's EnvironmentFile=).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from agent import clock
from agent.config import load_config
from agent.devbroker import Mosquitto
from agent.errors import AgentError
from agent.gateway import Gateway
from agent.liveview import LiveView

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
#: The public example keys of the example configs, as NAME=value lines (systemd EnvironmentFile= format).
EXAMPLE_KEYS = CONFIG_DIR / "example-keys.env"

_ENV_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def read_env_file(path: str | os.PathLike[str] = EXAMPLE_KEYS) -> dict[str, str]:
    """Read ``NAME=value`` lines (blank lines and ``#`` comments skipped; a value may be in quotes).

    Args:
        path: The file, by default config/example-keys.env.

    Returns:
        The variables, in file order. The values are secrets in general: never log them.

    Raises:
        AgentError: the file cannot be read, or a line is not ``NAME=value`` (its number is given, not its text).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc.strerror}") from None
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        m = _ENV_LINE.match(text)
        if m is None:
            raise AgentError(f"{path}:{number}: not a NAME=value line (NAME in upper case)")
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[m.group(1)] = value
    return found


def run_demo(*, duration: float | None = None, workdir: str | None = None) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; returns an exit code."""
    from drivers.sim.scenario import Scenario  # noqa: PLC0415 - simulators only load for the demo

    work = Path(workdir or tempfile.mkdtemp(prefix="denen-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    console = Console()
    # The live view owns the terminal; the agent's log goes to a file the user can read afterwards.
    log_file = work / "agent.log"
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    broker = Mosquitto(work / "broker")
    broker.start()
    scenario = Scenario.from_file(CONFIG_DIR / "scenarios" / "demo.yaml", link_dir=work / "sim")
    # The agent runs in this process: its key_env variables are this process's environment. The file's values
    # win over any already set, since they must match the simulated nodes' keys.
    os.environ.update(read_env_file(EXAMPLE_KEYS))
    # Simulated hardware on the host's clock: trust it (a container or CI host runs no NTP, and the agent would
    # otherwise hold telemetry waiting for a sync that never comes).
    clock.trust_wall_clock()
    cfg = load_config(CONFIG_DIR / "demo.yaml")
    cfg = cfg.model_copy(update={
        "mqtt": cfg.mqtt.model_copy(update={"port": broker.port}),
        "journal": cfg.journal.model_copy(update={"path": str(work / "journal.db")}),
        "radios": [r.model_copy(update={"port": str(work / "sim" / r.name)}) for r in cfg.radios],
    })
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    gw: Gateway | None = None
    view: LiveView | None = None
    try:
        scenario.start()
        view = LiveView(broker.host, broker.port, prefix=cfg.mqtt.topic_prefix)
        gw = Gateway(cfg)
        gw.start()
        console.print(f"[bold]denen demo[/]: broker 127.0.0.1:{broker.port}, modules "
                      + ", ".join(f"{n} at {m.path}" for n, m in scenario.modules.items())
                      + f"; agent log {log_file}. Ctrl-C stops.")
        deadline = None if duration is None else time.monotonic() + duration
        with Live(view.render(), console=console, refresh_per_second=2, transient=False) as live:
            while not done.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                done.wait(0.5)
                live.update(view.render())
        console.print(f"journal {cfg.journal.path}: inspect with  denen status -j {work / 'journal.db'}")
        if view.state.readings == 0:
            raise AgentError(f"no reading reached the broker; see {log_file}")
        return 0
    finally:
        if gw is not None:
            gw.stop()
        if view is not None:
            view.close()
        scenario.stop()
        broker.stop()
