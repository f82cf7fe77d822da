"""Log lines for journald (``<N>`` prefix, no timestamp) or for people (timestamp), decided by a real fd."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import logsetup

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure_logging changes process-wide state: the root logger and sys.excepthook."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    sys.excepthook = hook
    logging.captureWarnings(False)


@pytest.fixture
def stream_socket() -> Iterator[tuple[io.TextIOBase, socket.socket]]:
    """A stream socket like the one journald gives a service as stderr: (the service's end as text, journald's)."""
    ours, journald = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    journald.settimeout(2.0)
    f = ours.makefile("w", encoding="utf-8", newline="\n")
    yield f, journald
    f.close()
    ours.close()
    journald.close()


def _stream_id(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.fixture
def journald_logging(stream_socket: tuple[io.TextIOBase, socket.socket],
                     monkeypatch: pytest.MonkeyPatch) -> tuple[io.TextIOBase, socket.socket]:
    """Logging configured on a stderr that is journald's stream (JOURNAL_STREAM names it): ``stream_socket``."""
    f, _ = stream_socket
    monkeypatch.setenv("JOURNAL_STREAM", _stream_id(f.fileno()))
    logsetup.configure_logging(stream=f)
    return stream_socket


def _received(sock: socket.socket) -> str:
    sock.setblocking(False)
    chunks = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode()


def test_priorities_follow_sd_daemon() -> None:
    assert logsetup.syslog_priority(logging.CRITICAL) == 2
    assert logsetup.syslog_priority(logging.ERROR) == 3
    assert logsetup.syslog_priority(logging.WARNING) == 4
    assert logsetup.syslog_priority(logging.INFO) == 6
    assert logsetup.syslog_priority(logging.DEBUG) == 7
    assert logsetup.syslog_priority(logging.INFO + 5) == 6  # a level between two takes the lower one's priority
    assert logsetup.syslog_priority(1) == 7


def test_matching_journal_stream_gives_prefixed_lines_without_timestamp(
        stream_socket: tuple[io.TextIOBase, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    f, journald = stream_socket
    monkeypatch.setenv("JOURNAL_STREAM", _stream_id(f.fileno()))
    assert logsetup.under_journald(f)
    logsetup.configure_logging(debug=True, stream=f)
    log = logging.getLogger("denen.test")
    log.debug("d %d", 1)
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    f.flush()
    assert _received(journald).splitlines() == [
        "<7>DEBUG denen.test: d 1",
        "<6>INFO denen.test: i",
        "<4>WARNING denen.test: w",
        "<3>ERROR denen.test: e",
        "<2>CRITICAL denen.test: c",
    ]


def test_a_traceback_keeps_the_prefix_on_every_line(
        journald_logging: tuple[io.TextIOBase, socket.socket]) -> None:
    f, journald = journald_logging
    try:
        raise ValueError("bad frame\nsecond line")
    except ValueError:
        logging.getLogger("denen.core").exception("decoding failed")
    # A hostile name with a carriage return: journald would not split there, a terminal would overwrite.
    logging.getLogger("denen.core").warning("node %s", "a\rb")
    f.flush()
    lines = _received(journald).splitlines()
    assert lines[0] == "<3>ERROR denen.core: decoding failed"
    assert "<3>Traceback (most recent call last):" in lines
    assert "<3>ValueError: bad frame" in lines and "<3>second line" in lines
    assert lines[-2:] == ["<4>WARNING denen.core: node a", "<4>b"]
    assert all(re.match(r"<[2-7]>", line) for line in lines), lines


def test_uncaught_exception_under_journald_is_critical_on_every_line(
        journald_logging: tuple[io.TextIOBase, socket.socket]) -> None:
    f, journald = journald_logging
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    lines = _received(journald).splitlines()
    assert lines[0] == "<2>Traceback (most recent call last):"
    assert lines[-1] == "<2>RuntimeError: boom"
    assert all(line.startswith("<2>") for line in lines)


def test_python_warnings_under_journald_are_warnings(journald_logging: tuple[io.TextIOBase, socket.socket]) -> None:
    import warnings

    f, journald = journald_logging
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # not "error", as the suite's filter would have it
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    f.flush()
    lines = _received(journald).splitlines()
    assert lines[0].startswith("<4>WARNING py.warnings: ") and "DeprecationWarning: old API" in lines[0], lines
    assert all(line.startswith("<4>") for line in lines), lines


@pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "x:y", "1:2:3"])
def test_a_malformed_or_foreign_journal_stream_gives_plain_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 value: str) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", value)
    with open(tmp_path / "log", "w", encoding="utf-8") as f:
        assert not logsetup.under_journald(f)


def test_journal_stream_of_another_file_gives_plain_lines_with_timestamp(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Inherited JOURNAL_STREAM, but stderr redirected to a file: the file's inode differs, so plain text."""
    with open(tmp_path / "other", "w") as other, open(tmp_path / "log", "w", encoding="utf-8") as f:
        monkeypatch.setenv("JOURNAL_STREAM", _stream_id(other.fileno()))
        assert logsetup.under_journald(other)
        assert not logsetup.under_journald(f)
        hook = sys.excepthook
        logsetup.configure_logging(stream=f)
        assert sys.excepthook is hook
        logging.getLogger("denen.test").debug("not shown: INFO and up without debug")
        logging.getLogger("denen.test").warning("plain %s", "text")
        f.flush()
    lines = (tmp_path / "log").read_text().splitlines()
    assert len(lines) == 1
    assert _STAMP.match(lines[0]), lines[0]
    assert lines[0].endswith(" WARNING denen.test: plain text")
    assert not lines[0].startswith("<")


def test_a_stream_without_fd_gives_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    buf = io.StringIO()
    assert not logsetup.under_journald(buf)
    logsetup.configure_logging(stream=buf)
    logging.getLogger("x").info("hello")
    assert _STAMP.match(buf.getvalue())


def test_default_stream_is_stderr_and_a_second_call_replaces_the_first(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "err", "w", encoding="utf-8") as err:
        monkeypatch.setattr(sys, "stderr", err)
        monkeypatch.setenv("JOURNAL_STREAM", _stream_id(err.fileno()))
        assert logsetup.under_journald()
        logsetup.configure_logging()
        logsetup.configure_logging(debug=True)
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_denen_logsetup", False)]
        assert len(ours) == 1
        logging.getLogger("denen").debug("once")
        err.flush()
    assert (tmp_path / "err").read_text() == "<7>DEBUG denen: once\n"


def test_plain_lines_show_the_time_in_the_local_zone_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        record = logging.makeLogRecord({"msg": "x", "created": 1764990000.25, "msecs": 250.0})
        assert logsetup.TextFormatter(logsetup.PLAIN_FORMAT).formatTime(record) == "2025-12-06 12:00:00,250 JST"
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
        assert logsetup.TextFormatter().formatTime(record) == "2025-12-06 03:00:00,250 UTC"
    finally:
        monkeypatch.undo()
        time.tzset()
