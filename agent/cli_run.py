"""``denen run``, ``denen bridge`` and ``denen sim``: the commands that run until stopped, and how a signal stops
each."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from agent import __version__
from agent.errors import AgentError
from agent.i18n import _

__all__ = ["bridge", "run", "sim"]

log = logging.getLogger("denen")


def run(config_path: str | None) -> int:
    import signal  # noqa: PLC0415

    import agent.config.models  # noqa: F401, PLC0415 - imported once, before the fork, for both processes
    from agent.config.handoff import load_in_child  # noqa: PLC0415

    # In a short-lived child, so that this process never holds the YAML parser or a built validator; the
    # gateway's modules are imported meanwhile.
    active, cfg = load_in_child(lambda: _active_config(config_path), what=config_path or "denen run",
                                meanwhile=_import_gateway)
    from agent.gateway.core import Gateway  # noqa: PLC0415
    from agent.gateway.events import Wake  # noqa: PLC0415

    logging.getLogger().setLevel(getattr(logging, cfg.log.level.upper()))
    gw = Gateway(cfg, active_config=active.describe())
    _stop_on_signals(gw.stop)
    # `denen node reset-counter` wakes the core this way, so a request is carried out at once (SimpleQueue.put
    # may be called from a signal handler).
    signal.signal(signal.SIGUSR1, lambda signum, frame: gw.inbox.put(Wake()))
    log.info("%s", _("denen {version}: {config}, gateway {gateway}").format(
        version=__version__, config=active.describe(), gateway=cfg.gateway.id))
    gw.run()
    return 1 if gw.failure else 0  # systemd restarts the agent either way (Restart=always)


def _import_gateway() -> None:
    import agent.gateway.core  # noqa: F401, PLC0415


def _active_config(config_path: str | None) -> tuple[Any, Any]:
    """Which config runs (a new flash installed), and that config loaded: ``(ActiveConfig, Config)``. What was
    refused or installed on the way is logged here, before the config's own warnings."""
    from agent.config import load_config  # noqa: PLC0415
    from agent.gateway.boot import parsed_config_cache, resolve_active_config  # noqa: PLC0415

    active = resolve_active_config(config_path)
    for problem in active.problems:
        log.error("%s", problem)
    for note in active.notes:
        log.info("%s", note)
    return active, load_config(active.path, parsed_cache=parsed_config_cache())


def bridge(config_path: str, *, retire: bool = False) -> int:
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from agent.bridge import Bridge, load_bridge_config  # noqa: PLC0415

    cfg = load_bridge_config(config_path)
    logging.getLogger().setLevel(getattr(logging, cfg.log.level.upper()))
    bridge = Bridge(cfg)

    def handler(signum: int, frame: Any) -> None:
        log.info("%s", _("signal {signal}: stopping the bridge").format(signal=signum))
        threading.Thread(target=bridge.request_stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    log.info("%s", _("denen {version} bridge: config {path}").format(version=__version__, path=config_path))
    if retire:
        if not bridge.retire():
            print(_("denen: the bridge stopped before its session was drained; the session stays on the broker "
                    "(run --retire again to finish)"), file=sys.stderr)
            return 1
        return 0
    bridge.run()
    return 0


def _stop_on_signals(stop: Any) -> None:
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    def handler(signum: int, frame: Any) -> None:
        log.info("%s", _("signal {signal}: stopping").format(signal=signum))
        # stop() joins the core thread; the core runs in the main thread here, so only set the flag.
        threading.Thread(target=stop, kwargs={"timeout": 0}, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def sim(scenario_path: str, link_dir: str, duration: float | None) -> int:
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from agent import assets  # noqa: PLC0415
    from drivers.sim.scenario import Scenario  # noqa: PLC0415

    try:
        if scenario_path == "demo" and not os.path.exists(scenario_path):
            with assets.as_file(assets.DEMO_SCENARIO) as packaged:
                scenario = Scenario.from_file(packaged, link_dir=link_dir)
        else:
            scenario = Scenario.from_file(scenario_path, link_dir=link_dir)
    except (ValueError, OSError) as exc:
        raise AgentError(str(exc)) from exc
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_args: done.set())
    signal.signal(signal.SIGINT, lambda *_args: done.set())
    scenario.start()
    try:
        for name, module in scenario.modules.items():
            print(f"{name}: {module.path} -> {module.port.slave_path}", flush=True)
        print(_("{count} nodes sending; Ctrl-C stops").format(count=len(scenario.nodes)), flush=True)
        done.wait(duration)
    finally:
        scenario.stop()
    return 0
