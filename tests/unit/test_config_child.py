"""agent.config.handoff: the config loaded in a forked child and handed back, its errors raised as in-process.

Each case runs in a fresh interpreter: a fork must start from a process with one thread (pytest's may have more),
and a child that kills itself must not take the test runner along.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from tests.support.paths import REPO

GOOD = """\
gateway: {id: gw-test, site: test}
radios:
  - {name: lora0, driver: rak3172, port: /dev/null}
nodes:
  - {id: "00000101", name: trap-1, kind: trap, key: "00112233445566778899aabbccddeeff"}
  - {id: "00000102", name: trap-2, kind: trap, key_env: DENEN_KEY_CHILD_TEST}
"""
ENV_KEY = "ffeeddccbbaa99887766554433221100"


def run_case(body: str, *args: str, timeout: float = 60) -> dict:
    """Run ``body`` (with ``load_in_child`` imported) in a fresh interpreter; what it printed as JSON."""
    code = "import json, os, signal, sys, time\nfrom agent.config.handoff import load_in_child\n" + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_config_comes_back_whole_and_nothing_is_validated_in_the_parent(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENEN_KEY_CHILD_TEST", ENV_KEY)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(GOOD)
    cfg.chmod(0o600)
    got = run_case("""
        import agent.config.models
        def load():
            from agent.config import load_config
            return load_config(sys.argv[1])
        cfg = load_in_child(load, what=sys.argv[1])
        from pydantic import BaseModel
        def subclasses(c):
            for s in c.__subclasses__():
                yield s
                yield from subclasses(s)
        built = sorted({c.__qualname__ for c in subclasses(BaseModel) if c.__pydantic_complete__})
        radio = cfg.radios[0]
        print(json.dumps({"built": built, "ruamel": any("ruamel" in m for m in sys.modules),
                          "type": type(cfg).__qualname__, "typed_p2p": type(radio.p2p).__qualname__,
                          "sf": radio.p2p.spreading_factor, "ids": sorted(cfg.node_by_id),
                          "radios": sorted(cfg.radio_by_name), "key": cfg.nodes[0].key_bytes().hex(),
                          "env_key": cfg.nodes[1].key_bytes().hex(),
                          "journal": cfg.journal.path}))
    """, str(cfg))
    here = load_config(cfg)
    assert got["built"] == [] and got["ruamel"] is False
    assert got["type"] == "Config" and got["typed_p2p"] == "P2pConfig"
    assert got["sf"] == here.radios[0].p2p.spreading_factor
    assert got["ids"] == sorted(here.node_by_id) == [0x101, 0x102]
    assert got["env_key"] == ENV_KEY
    assert got["radios"] == ["lora0"]
    assert got["key"] == here.nodes[0].key_bytes().hex()
    assert got["journal"] == here.journal.path


def test_a_config_error_is_raised_in_the_parent_with_the_same_text(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DENEN_KEY_CHILD_TEST", raising=False)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(GOOD.replace("rak3172", "rak9999").replace("gw-test", "GW TEST"))
    cfg.chmod(0o600)
    try:
        load_config(cfg)
    except ConfigError as exc:
        expected = str(exc)
    else:  # pragma: no cover - the config above is invalid
        raise AssertionError("the config should not load")
    got = run_case("""
        from agent.errors import ConfigError
        def load():
            from agent.config import load_config
            return load_config(sys.argv[1])
        try:
            load_in_child(load, what=sys.argv[1])
        except ConfigError as exc:
            print(json.dumps({"text": str(exc), "issues": len(exc.issues)}))
    """, str(cfg))
    assert got["text"] == expected
    assert got["issues"] == 3  # the gateway id, the driver, the variable not set


def test_another_error_of_the_child_is_raised_as_itself() -> None:
    got = run_case("""
        from agent.errors import AgentError
        def load():
            raise AgentError("config file /nope does not exist (hint: check the path given with -c)")
        try:
            load_in_child(load, what="x")
        except AgentError as exc:
            print(json.dumps({"type": type(exc).__name__, "text": str(exc)}))
    """)
    assert got == {"type": "AgentError", "text": "config file /nope does not exist (hint: check the path given with -c)"}


def test_a_missing_module_in_the_child_keeps_its_name() -> None:
    got = run_case("""
        def load():
            import denen_no_such_module  # noqa: F401
        try:
            load_in_child(load, what="x")
        except ModuleNotFoundError as exc:
            print(json.dumps({"name": exc.name}))
    """)
    assert got == {"name": "denen_no_such_module"}


def test_a_child_that_is_killed_is_a_config_error() -> None:
    got = run_case("""
        from agent.errors import ConfigError
        def load():
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            load_in_child(load, what="gw.yaml")
        except ConfigError as exc:
            print(json.dumps({"text": str(exc)}))
    """)
    assert got["text"].startswith("gw.yaml: the config check ended without an answer (killed by signal 9)")


def test_a_child_that_exits_without_an_answer_is_a_config_error() -> None:
    got = run_case("""
        from agent.errors import ConfigError
        def load():
            os._exit(3)
        try:
            load_in_child(load, what="gw.yaml")
        except ConfigError as exc:
            print(json.dumps({"text": str(exc)}))
    """)
    assert "ended without an answer (exit status 3)" in got["text"]


def test_a_child_that_hangs_is_killed_after_the_timeout() -> None:
    got = run_case("""
        from agent.errors import ConfigError
        def load():
            time.sleep(60)
        t0 = time.monotonic()
        try:
            load_in_child(load, what="gw.yaml", timeout_s=0.5)
        except ConfigError as exc:
            took = time.monotonic() - t0
            try:
                left = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                left = None
            print(json.dumps({"text": str(exc), "took": took, "left": left}))
    """)
    assert "checking the config took longer than 0.5 s" in got["text"]
    assert got["took"] < 10
    assert got["left"] is None  # the child was killed and reaped


def test_what_runs_meanwhile_runs_in_the_parent_while_the_child_works() -> None:
    got = run_case("""
        parent = os.getpid()
        seen = []
        def load():
            time.sleep(0.3)
            return os.getpid()
        child = load_in_child(load, what="x", meanwhile=lambda: seen.append(os.getpid()))
        print(json.dumps({"child_is_other": child != parent, "meanwhile_here": seen == [parent]}))
    """)
    assert got == {"child_is_other": True, "meanwhile_here": True}


def test_with_other_threads_it_loads_in_this_process() -> None:
    got = run_case("""
        import threading
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            pid = load_in_child(os.getpid, what="x")
        finally:
            stop.set()
            t.join()
        print(json.dumps({"same": pid == os.getpid()}))
    """)
    assert got == {"same": True}
