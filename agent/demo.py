"""``denen demo``: a simulated forest and river -> the agent -> a real MQTT broker -> a live terminal view.

Everything runs on this machine: the radio modules are simulators on real ptys (config/scenarios/demo.yaml), the
agent runs config/demo.yaml with its ports, journal and broker port pointed at a scratch folder, and the broker
is the system's Mosquitto started on a free loopback port.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from agent.config import load_config
from agent.devbroker import Mosquitto
from agent.errors import AgentError
from agent.gateway import Gateway
from agent.liveview import LiveView

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


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
