"""Scenarios: simulated sensor nodes talking to simulated radio modules in real time, with scripted events.

A :class:`Scenario` owns modules (the simulator twins of the registered drivers) and nodes
(:class:`~drivers.sim.nodes.SimNode`). One scheduler thread sends each node's periodic frames and runs scripted
events (press SOS, fire a trap, raise the river, reboot or unplug a module, garbage bursts, switch faults on) at
their time. Nothing polls: the thread sleeps on a condition until the next due time. ``speed`` compresses time:
at ``speed=60`` one scenario minute passes per real second (node intervals and event times are scenario seconds;
module timings such as airtime and boot delay stay real).

Scenario files are YAML, loaded with ruamel.yaml and validated with pydantic (:mod:`drivers.sim.scenario_spec`);
a bad file raises :class:`ScenarioError` naming the file, the line, the key and a hint. Example::

    speed: 1.0
    seed: 7
    modules:
      - name: lora0
        model: rak3172            # a driver's simulator twin (DriverSpec.twin)
        link: lora0               # relative: under link_dir (or next to this file)
        boot_delay_s: 1.0
        profile: {legacy_rx: false, bw_as_khz: false}
        faults: {garbage_probability: 0.01}
    nodes:
      - id: "00A1B2C3"            # 8 hex digits, quoted
        kind: trap
        module: lora0
        key: "000102030405060708090a0b0c0d0e0f"
        interval_s: 600
        rssi: -92
        snr: 4.5
        counter_start: 1
    events:
      - {at_s: 30, action: fire_trap, node: "00A1B2C3"}
      - {at_s: 60, action: unplug, module: lora0, duration_s: 5}

Node keys besides those above (all optional): ``battery_v``, ``receipt`` (SOS asks for a receipt, default true),
``lat_deg``/``lon_deg``, ``level_cm`` (water_level start), ``rain_mm_per_h`` (rain start), ``first_at_s`` (time of
the first periodic frame; default random within one interval). Module ``profile`` keys are the simulator's
keyword arguments, checked by the twin module's ``Profile`` model where it has one. The twin of a driver is the
module ``drivers.sim.<twin>``, whose ``Simulator`` is the class built here.

Event actions (``at_s`` = scenario seconds from start)::

    sos          node, pressed (default true)       press (or cancel) an SOS button
    fire_trap    node                               a trap fires
    arm_trap     node                               a trap is re-armed
    river_level  node, level_cm, over_s (0)         move a river gauge's level, at once or as a ramp
    rain         node, mm_per_h                     set a rain gauge's rain rate
    tilt         node, x_deg, y_deg, over_s (0)     move a slope sensor
    send         node                               send the node's periodic frame now
    reboot       module, noise (default true)       power-cycle a module
    unplug       module, duration_s                 the module's port vanishes, then comes back
    garbage      module, count (1), hex (optional)  garbage bursts on the module's line
    faults       module, <fault>_probability ...    change a module's line faults
    crc_error    module                             a packet with a bad CRC (twins that model one)
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from drivers.sim.faults import ModuleFaults
from drivers.sim.nodes import SentFrame, SimNode
from drivers.sim.scenario_spec import (
    FAULT_FIELDS,
    CrcErrorEvent,
    FaultsEvent,
    GarbageEvent,
    LevelEvent,
    ModuleSpec,
    NodeEvent,
    RainEvent,
    RebootEvent,
    ScenarioError,
    SendEvent,
    SosEvent,
    TiltEvent,
    TrapEvent,
    UnplugEvent,
    format_errors,
    line_of,
    read_scenario_file,
    validate_scenario,
)

log = logging.getLogger(__name__)

__all__ = ["Scenario", "SimModule", "run_scenario_forever"]


class SimModule(Protocol):
    """What a scenario needs from a simulated module: every simulator twin provides it."""

    name: str
    faults: ModuleFaults

    @property
    def path(self) -> str: ...
    @property
    def booted(self) -> bool: ...
    def start(self, *, wait: bool = ...) -> None: ...
    def stop(self) -> None: ...
    def reboot(self, *, noise: bool = True) -> None: ...
    def unplug(self) -> None: ...
    def replug(self) -> None: ...
    def inject_uplink(self, payload: bytes, *, rssi: int = ..., snr: float = ..., src: int | None = ...) -> bool: ...
    def inject_garbage(self, data: bytes | None = None) -> None: ...
    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool: ...



# -- the scenario ----------------------------------------------------------------------------------------------
class Scenario:
    """Nodes and modules running together, with a scheduler thread.

    Args:
        speed: scenario seconds per real second (1.0 = real time).
        rng: random source for scheduling jitter; nodes get their own, derived from it.
        name: label for the scheduler thread and logs.

    Attributes:
        modules: simulated modules by name.
        nodes: simulated nodes by node id.
        node_module: the module name each node's frames go to, by node id.
        log: ``(scenario time s, description)`` of every event and frame, in order.
    """

    def __init__(self, *, speed: float = 1.0, rng: random.Random | None = None, name: str = "scenario") -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = speed
        self.name = name
        self.rng = rng or random.Random()
        self.modules: dict[str, SimModule] = {}
        self.nodes: dict[int, SimNode] = {}
        self.node_module: dict[int, str] = {}
        self.log: list[tuple[float, str]] = []
        self._first_at: dict[int, float | None] = {}
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None], str]] = []
        self._seq = itertools.count()
        self._t0: float | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pending: list[tuple[float, Callable[[], None], str]] = []  # scheduled before start()

    # -- building --------------------------------------------------------------------------------------------
    def add_module(self, name: str, module: SimModule) -> SimModule:
        """Register a module under ``name``; it is started with the scenario."""
        if name in self.modules:
            raise ValueError(f"module {name!r} already exists")
        self.modules[name] = module
        on_tx = getattr(module, "on_transmit", None)
        if isinstance(on_tx, list):
            on_tx.append(lambda payload, _name=name: self._downlink(_name, payload))
        return module

    def add_node(self, node: SimNode, module: str, *, first_at_s: float | None = None) -> SimNode:
        """Register a node whose frames go to ``module``.

        Args:
            node: the node; its clock is switched to scenario time.
            module: name of a registered module.
            first_at_s: scenario time of its first periodic frame; None picks a random moment within one interval
                (real nodes are not synchronised).
        """
        if module not in self.modules:
            raise ValueError(f"unknown module {module!r} (known: {', '.join(self.modules) or 'none'})")
        if node.node_id in self.nodes:
            raise ValueError(f"node {node.node_id:08X} already exists")
        node.clock = self.now
        self.nodes[node.node_id] = node
        self.node_module[node.node_id] = module
        self._first_at[node.node_id] = first_at_s
        return node

    def at(self, t_s: float, action: Callable[[], object], *, label: str = "") -> None:
        """Run ``action()`` in the scheduler thread at scenario time ``t_s`` (seconds from start)."""
        def run() -> None:
            action()
        entry = (float(t_s), run, label or getattr(action, "__name__", "action"))
        with self._cond:
            if self._t0 is None:
                self._pending.append(entry)
            else:
                self._push(*entry)

    @property
    def sent(self) -> list[SentFrame]:
        """Every frame every node sent, in time order."""
        frames = [f for node in self.nodes.values() for f in node.sent]
        return sorted(frames, key=lambda f: (f.t, f.node_id, f.counter))

    # -- time --------------------------------------------------------------------------------------------------
    def now(self) -> float:
        """Scenario time in seconds since :meth:`start` (0 before it)."""
        t0 = self._t0
        return 0.0 if t0 is None else (time.monotonic() - t0) * self.speed

    # -- running -----------------------------------------------------------------------------------------------
    def start(self, *, wait_boot: bool = True) -> None:
        """Start the modules (waiting for them to boot), then the scheduler.

        Args:
            wait_boot: wait until every module has booted (at most its boot delay + 5 s).
        """
        for module in self.modules.values():
            module.start(wait=False)
        if wait_boot:
            for name, module in self.modules.items():
                booted = (lambda m=module: m.booted)
                if not module.wait_for(booted, timeout=float(getattr(module, "boot_delay_s", 1.0)) + 5.0):
                    log.warning("scenario: module %s did not finish booting", name)
        with self._cond:
            self._t0 = time.monotonic()
            self._stopping = False
            for entry in self._pending:
                self._push(*entry)
            self._pending.clear()
            for node_id, node in self.nodes.items():
                first = self._first_at.get(node_id)
                if first is None:
                    first = self.rng.uniform(0, node.interval_s)
                self._push(first, lambda n=node: self._periodic(n), f"periodic {node_id:08X}")
        self._thread = threading.Thread(target=self._run, name=f"scenario-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the scheduler and the modules."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        for module in self.modules.values():
            try:
                module.stop()
            except OSError as exc:  # a pty already gone must not keep the others running
                log.warning("scenario: stopping %s: %s", getattr(module, "name", module), exc)

    def __enter__(self) -> Scenario:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_until(self, t_s: float, *, timeout: float | None = None) -> bool:
        """Block until scenario time ``t_s`` (or until stopped / the real-time timeout). Returns whether reached."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._stopping and self.now() < t_s:
                remaining = (t_s - self.now()) / self.speed
                if deadline is not None:
                    remaining = min(remaining, deadline - time.monotonic())
                    if remaining <= 0:
                        return False
                self._cond.wait(remaining)
            return self.now() >= t_s

    def _push(self, t_s: float, fn: Callable[[], None], label: str) -> None:
        heapq.heappush(self._heap, (t_s, next(self._seq), fn, label))
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = (self._heap[0][0] - self.now()) / self.speed
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                if self._stopping:
                    return
                _, _, fn, label = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # thread top level: one failing event must not stop the scenario
                log.exception("scenario: %s failed", label)

    # -- what happens ------------------------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        self.log.append((round(self.now(), 3), text))
        log.debug("scenario t=%.1f: %s", self.now(), text)

    def _periodic(self, node: SimNode) -> None:
        self.transmit(node, node.periodic())
        # Node clocks drift a little: ±2 % jitter keeps nodes from staying in lock-step.
        nxt = self.now() + node.interval_s * self.rng.uniform(0.98, 1.02)
        with self._cond:
            self._push(nxt, lambda: self._periodic(node), f"periodic {node.node_id:08X}")

    def transmit(self, node: SimNode, sent: SentFrame) -> bool:
        """Put a node's frame on the air towards its module. Returns whether the module delivered it."""
        name = self.node_module[node.node_id]
        module = self.modules[name]
        rssi, snr = node.link_quality()
        # Module addresses (where a module has them) are 16-bit: the node's low 16 bits act as its source id.
        delivered = bool(module.inject_uplink(sent.payload, rssi=rssi, snr=snr, src=node.node_id & 0xFFFF))
        sent.module, sent.delivered, sent.rssi, sent.snr = name, delivered, rssi, snr
        self._note(f"{sent.kind} #{sent.counter} from {node.node_id:08X} -> {name}"
                   f"{'' if delivered else ' (not heard: radio not listening)'}")
        return delivered

    def _downlink(self, module: str, payload: bytes) -> None:
        for node_id, name in self.node_module.items():
            if name == module and self.nodes[node_id].receive_downlink(payload):
                self._note(f"downlink {payload.hex()} -> {node_id:08X}")

    def apply(self, event: Any) -> None:
        """Carry out one event from a scenario file (one of the ``*Event`` models)."""
        action = event.action
        if isinstance(event, NodeEvent):
            node = self.nodes[int(event.node, 16)]
            if isinstance(event, SosEvent):
                self.transmit(node, node.press_sos(pressed=event.pressed))
            elif isinstance(event, TrapEvent):
                self.transmit(node, node.fire_trap() if action == "fire_trap" else node.arm_trap())
            elif isinstance(event, LevelEvent):
                node.set_level(event.level_cm, over_s=event.over_s)
                self._note(f"river at {node.node_id:08X} -> {event.level_cm} cm over {event.over_s} s")
            elif isinstance(event, RainEvent):
                node.set_rain(event.mm_per_h)
                self._note(f"rain at {node.node_id:08X} -> {event.mm_per_h} mm/h")
            elif isinstance(event, TiltEvent):
                node.set_tilt(event.x_deg, event.y_deg, over_s=event.over_s)
                self._note(f"tilt at {node.node_id:08X} -> ({event.x_deg}, {event.y_deg})")
            elif isinstance(event, SendEvent):
                self.transmit(node, node.periodic())
            return
        module = self.modules[event.module]
        if isinstance(event, RebootEvent):
            module.reboot(noise=event.noise)
            self._note(f"{event.module} power-cycled")
        elif isinstance(event, UnplugEvent):
            module.unplug()
            self._note(f"{event.module} unplugged for {event.duration_s} s")
            self.at(self.now() + event.duration_s, lambda: self._replug(event.module), label="replug")
        elif isinstance(event, GarbageEvent):
            data = bytes.fromhex(event.hex) if event.hex else None
            for _ in range(event.count):
                module.inject_garbage(data)
            self._note(f"{event.module}: {event.count} garbage burst(s)")
        elif isinstance(event, FaultsEvent):
            for name in FAULT_FIELDS:
                value = getattr(event, name)
                if value is not None:
                    setattr(module.faults, name, value)
            self._note(f"{event.module}: faults set")
        elif isinstance(event, CrcErrorEvent):
            inject = getattr(module, "inject_crc_error", None)
            if inject is not None:
                inject()
            self._note(f"{event.module}: CRC error")

    def _replug(self, name: str) -> None:
        self.modules[name].replug()
        self._note(f"{name} plugged back")

    # -- loading -----------------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, link_dir: str | os.PathLike[str] | None = None,
                  speed: float | None = None, boot_delay_s: float | None = None) -> Scenario:
        """Load and validate a YAML scenario file and build the scenario (not started).

        Args:
            path: the YAML file.
            link_dir: directory for the modules' stable device links; relative ``link`` values resolve against
                it (default: the file's directory), and a module without ``link`` gets ``<link_dir>/<name>`` when
                link_dir is given (else a bare ``/dev/pts/N``).
            speed: overrides the file's ``speed``.
            boot_delay_s: overrides every module's boot delay, in seconds (tests use a short one).

        Raises:
            ScenarioError: the file cannot be read, is not valid YAML, or does not match the schema; the message
                names the file, the line, the key and a hint.
        """
        source = str(path)
        data = read_scenario_file(path)
        base = Path(link_dir) if link_dir is not None else Path(path).resolve().parent
        return cls.from_dict(data, source=source, link_base=base, default_links=link_dir is not None, speed=speed,
                             boot_delay_s=boot_delay_s)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "<scenario>", link_base: str | os.PathLike[str] | None = None,
                  default_links: bool = False, speed: float | None = None,
                  boot_delay_s: float | None = None) -> Scenario:
        """Validate a scenario given as plain data (as a YAML file would hold it) and build it.

        Args:
            data: the mapping.
            source: name used in error messages.
            link_base: directory that relative links resolve against (default: the working directory).
            default_links: give modules without ``link`` a link ``<link_base>/<name>``.
            speed: overrides ``speed``.
            boot_delay_s: overrides every module's boot delay, in seconds.

        Raises:
            ScenarioError: the data does not match the schema or refers to unknown names.
        """
        spec = validate_scenario(data, source)
        rng = random.Random(spec.seed)
        scenario = cls(speed=speed if speed is not None else spec.speed, rng=rng, name=Path(source).stem)
        base = Path(link_base) if link_base is not None else Path.cwd()
        for i, m in enumerate(spec.modules):
            link = None
            if m.link is not None:
                link = str(base / m.link) if not os.path.isabs(m.link) else m.link
            elif default_links:
                link = str(base / m.name)
            delay = boot_delay_s if boot_delay_s is not None else m.boot_delay_s
            module_rng = random.Random(rng.getrandbits(64))
            module = _make_module(source, data, i, m, link=link, boot_delay_s=delay, rng=module_rng)
            for name in FAULT_FIELDS:
                setattr(module.faults, name, getattr(m.faults, name))
            scenario.add_module(m.name, module)
        for n in spec.nodes:
            node = SimNode(
                int(n.id, 16), n.kind, key=bytes.fromhex(n.key) if n.key else None, counter_start=n.counter_start,
                interval_s=n.interval_s, rssi=n.rssi, snr=n.snr, rng=random.Random(rng.getrandbits(64)),
                battery_v=n.battery_v, receipt=n.receipt, lat_deg=n.lat_deg, lon_deg=n.lon_deg,
                level_cm=n.level_cm, rain_mm_per_h=n.rain_mm_per_h,
            )
            scenario.add_node(node, n.module, first_at_s=n.first_at_s)
        for event in spec.events:
            scenario.at(event.at_s, lambda e=event: scenario.apply(e), label=f"{event.action} @ {event.at_s}")
        return scenario


def _make_module(source: str, data: Mapping[str, Any], index: int, m: ModuleSpec, *, link: str | None,
                 boot_delay_s: float | None, rng: random.Random) -> SimModule:
    """Build one module, the twin ``drivers.sim.<model>``, from its spec, turning bad profile knobs into a
    ScenarioError. The model was checked against the registry's twin names, and a twin module is imported only
    when a scenario uses it."""
    twin = importlib.import_module(f"drivers.sim.{m.model}")
    simulator = twin.Simulator
    profile: Mapping[str, Any] = m.profile
    checker = getattr(twin, "Profile", None)
    if checker is not None:
        try:
            profile = checker.model_validate(m.profile).model_dump()
        except ValidationError as exc:
            raise ScenarioError(format_errors(source, data, exc, prefix=("modules", index, "profile"))) from None
    kwargs: dict[str, Any] = {"name": m.name, "link": link, "rng": rng}
    if boot_delay_s is not None:
        kwargs["boot_delay_s"] = boot_delay_s
    try:
        return simulator(**kwargs, **profile)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        where = f"modules.{index}.profile"
        line = line_of(data, ("modules", index, "profile"))
        raise ScenarioError(f"{source}{line}: {where}: {exc} (hint: see {simulator.__name__}'s keyword "
                            f"arguments)") from None



def run_scenario_forever(path: str | os.PathLike[str], link_dir: str | os.PathLike[str], *,
                         on_started: Callable[[Scenario], None] | None = None,
                         stop: threading.Event | None = None) -> None:
    """Load a scenario file, run it until ``stop`` is set (or KeyboardInterrupt), then shut it down.

    Prints nothing: the caller (the CLI) shows the device paths, e.g. from ``on_started``.

    Args:
        path: the YAML scenario file.
        link_dir: directory for the modules' device links (``<link_dir>/<module name>`` unless the file says).
        on_started: called with the running scenario once every module has booted.
        stop: set it to end the run; None runs until interrupted.

    Raises:
        ScenarioError: the file is invalid.
    """
    os.makedirs(link_dir, exist_ok=True)
    scenario = Scenario.from_file(path, link_dir=link_dir)
    scenario.start()
    try:
        if on_started is not None:
            on_started(scenario)
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        scenario.stop()

