"""Load the config in a short-lived child process and hand the validated :class:`Config` back to ``denen run``.

Reading, parsing (ruamel) and validating (pydantic's validators, built on first use) the config costs the
gateway about 15 MiB it would keep for its whole life. :func:`load_in_child` forks; the child runs the
loading step (which config is active, every check, warnings logged as ever) and sends the result back through a
pipe, pickled; the parent only unpickles it. Unpickling a pydantic model sets its fields without validating,
and the model classes are built with ``defer_build`` (drivers.settings.Section), so the parent never imports the
YAML parser nor builds a validator.

Only what the child sends through that pipe is unpickled: never anything read from a file.

A problem in the config comes back as the :class:`~agent.errors.ConfigError` (or other error) the child met, and
is raised in the parent, so it is reported exactly as when loading in-process. A child that dies, or takes longer
than :data:`CHILD_TIMEOUT_S`, is a config error of its own (exit code 2). A SIGTERM while the child works ends
the child and then the parent, as the signal would have ended a single process.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from agent.errors import ConfigError, ConfigIssue
from drivers.settings import N_, Text

__all__ = ["CHILD_TIMEOUT_S", "load_in_child"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Longest the parent waits for the child's answer, in seconds. Parsing a 2,000-node config takes about 2 s on a
#: 2-core x86 machine and is projected at about 40 s on a Pi Zero 2 W.
CHILD_TIMEOUT_S = 300.0

_CHUNK = 1 << 20


def load_in_child(load: Callable[[], _T], *, what: str, timeout_s: float = CHILD_TIMEOUT_S,
                  meanwhile: Callable[[], object] | None = None) -> _T:
    """``load()`` run in a forked child; its result (or the error it raised) in this process.

    Runs ``load()`` in this process when the process already has other threads (forking then is unsafe) or
    cannot fork.

    Args:
        load: what to run; its result must pickle (pydantic models do, also those of :func:`config_model`).
        what: the config named in the errors of the child itself (the path given, or a description).
        timeout_s: longest wait for the child's answer.
        meanwhile: run in this process while the child works (imports the gateway's modules: on two cores,
            start-up then takes no longer than loading in-process). Also run when ``load()`` runs in-process.

    Raises:
        ConfigError: the child's own, or the child died or hung.
        Exception: whatever else ``load()`` raised in the child (DenenError, ModuleNotFoundError ...).
    """
    if threading.active_count() > 1 or not hasattr(os, "fork"):
        log.debug("config: loaded in this process (%d threads)", threading.active_count())
        result = load()
        if meanwhile is not None:
            meanwhile()
        return result
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child would write what is buffered a second time
    stopped: list[int] = []
    # Caught from before the fork, so that a SIGTERM at any moment of the wait ends the child too.
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    try:
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child ends in os._exit, coverage never sees it
            os.close(read_fd)
            _child(load, write_fd, parent)
        os.close(write_fd)
        try:
            if meanwhile is not None:
                meanwhile()
        except BaseException:
            os.close(read_fd)
            _reap(pid, kill=True)
            raise
        return _parent(pid, read_fd, what, timeout_s, stopped)
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _child(load: Callable[[], Any], write_fd: int, parent: int) -> None:
    """Run ``load()`` and send ``("ok", result)`` or the error; never returns."""
    code = 0
    try:
        # Ctrl-C reaches the whole process group, systemd's stop the whole cgroup: the child ends at once, and
        # also when its parent is killed (SIGKILL, the OOM killer) while it works.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent(parent)
        try:
            answer: tuple[Any, ...] = ("ok", load())
        except ConfigError as exc:
            # ConfigError's args are its text, not its issues: send the issues and raise it again from them.
            answer = ("config", exc.issues)
        except ImportError as exc:
            # Its name and path are not in its args, which is all pickle keeps; the CLI names the missing extra.
            answer = ("import", str(exc), exc.name, exc.path, traceback.format_exc())
        except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
            answer = ("raise", exc, traceback.format_exc())
        body = _dumps(answer)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(body)
    except BrokenPipeError:
        code = 1  # the parent is gone (stopped while this child worked): nobody to tell
    except BaseException:  # noqa: BLE001 - a child never runs the parent's code after this point
        code = 1
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when its parent ends (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    try:
        import ctypes  # noqa: PLC0415 - the child only

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the prctl: nobody waits for the answer
        os._exit(1)


def _dumps(answer: tuple[Any, ...]) -> bytes:
    buf = io.BytesIO()
    try:
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(answer)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        if answer[0] != "raise":
            raise
        # An error that does not pickle still reaches the parent, as its text.
        buf = io.BytesIO()
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(
            ("raise", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}"), f"{answer[2]}\n{exc}"))
    return buf.getvalue()


class _Pickler(pickle.Pickler):
    """Pickles the models :func:`~agent.config.models.config_model` makes (named like their base class, so
    pickle cannot find them by name) as the recipe to make the class again, and the instance's state."""

    def reducer_override(self, obj: Any) -> Any:
        from agent.config.radio import REMAKE_ATTR  # noqa: PLC0415 - loaded by then

        recipe = getattr(type(obj), REMAKE_ATTR, None)
        if recipe is None or _findable(type(obj)):
            return NotImplemented
        return _remake, (recipe, obj.__getstate__())


def _findable(cls: type) -> bool:
    return getattr(sys.modules.get(cls.__module__), cls.__qualname__, None) is cls


def _remake(recipe: tuple[str, tuple[str, ...]], state: dict[str, Any]) -> Any:
    """A model instance from its class recipe and state, in the parent: no validation (pickle's own path)."""
    from agent.config.models import config_model  # noqa: PLC0415
    from agent.config.radio import radio_model  # noqa: PLC0415

    kind, drivers = recipe
    if kind == "config":
        cls = config_model(drivers)
    elif kind == "radio":
        cls = radio_model(drivers)
    else:
        raise pickle.UnpicklingError(f"unknown model recipe {kind!r}")
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj


def _parent(pid: int, read_fd: int, what: str, timeout_s: float, stopped: list[int]) -> Any:
    """Read the child's answer, reap it, and return the result or raise its error. ``stopped`` fills when a
    SIGTERM arrives."""
    body, timed_out, done = b"", False, False
    try:
        body, timed_out = _read_answer(read_fd, timeout_s, stopped)
        done = not stopped and not timed_out
    finally:
        # Ctrl-C (KeyboardInterrupt), SIGTERM or the timeout: the child must not outlive this wait.
        os.close(read_fd)
        status = _reap(pid, kill=not done)
    if stopped:
        # Ended as the signal would have ended a single process (the child is gone already).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # pragma: no cover - the signal ends the process first
    if timed_out:
        raise _child_error(what, Text(N_("checking the config took longer than {seconds} s"),
                                      seconds=f"{timeout_s:g}"))
    try:
        answer = pickle.loads(body) if body else None
    except Exception as exc:  # noqa: BLE001 - a truncated answer: the child died while writing it
        log.debug("config: the child's answer does not unpickle: %r", exc)
        answer = None
    if not isinstance(answer, tuple) or not answer:
        raise _child_error(what, _ended(status))
    return _result(answer)


def _read_answer(read_fd: int, timeout_s: float, stopped: list[int]) -> tuple[bytes, bool]:
    """Everything the child writes until it closes the pipe; (data, timed out). Returns early on SIGTERM."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while not stopped:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"", True
        ready, _, _ = select.select([read_fd], [], [], min(left, 0.2))  # 0.2 s: how soon a SIGTERM is seen
        if not ready:
            continue
        chunk = os.read(read_fd, _CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks), False


def _reap(pid: int, *, kill: bool) -> int:
    """Wait for the child (killed first when ``kill``); its wait status."""
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for signal handlers that raise
            continue
        except ChildProcessError:
            return 0


def _ended(status: int) -> Text:
    if os.WIFSIGNALED(status):
        return Text(N_("the config check ended without an answer (killed by signal {signal})"),
                    signal=os.WTERMSIG(status))
    return Text(N_("the config check ended without an answer (exit status {status})"),
                status=os.waitstatus_to_exitcode(status))


def _child_error(what: str, message: Text) -> ConfigError:
    return ConfigError([ConfigIssue(what, None, None, "", message, Text(N_(
        "run `denen config validate` with the same config to see what it reports; with --debug for details")))])


def _result(answer: tuple[Any, ...]) -> Any:
    kind = answer[0]
    if kind == "ok":
        return answer[1]
    if kind == "config":
        raise ConfigError(answer[1])
    if kind == "import":
        error = ModuleNotFoundError(answer[1], name=answer[2], path=answer[3])
        error.add_note(f"in the config check (a child process):\n{answer[4]}")
        raise error
    if kind == "raise" and isinstance(answer[1], BaseException):
        exc = answer[1]
        exc.add_note(f"in the config check (a child process):\n{answer[2]}")
        raise exc
    raise ConfigError([ConfigIssue("denen run", None, None, "", Text(N_("the config check sent an answer this "
                                                                          "agent does not understand")), None)])
