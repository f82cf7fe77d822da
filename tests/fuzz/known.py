"""Bugs the fuzzer found that are not fixed yet, each documented by a strict-xfail reproducer in
``tests/fuzz/test_fuzz_regressions.py``.

:func:`known_issue` tells a failure of a known bug from a new one: the dedicated run labels it (and still fails:
a known bug is still a bug), and the quick hypothesis tests let it pass so that the default suite stays green
until the fix lands. When a bug is fixed its reproducer XPASSes, which fails the suite (strict): then delete the
xfail mark and the entry below, and the fuzz tests guard the fix from then on.
"""

from __future__ import annotations

import traceback
from typing import Any

from tests.fuzz.targets import Outcome, Target, Violation, run_one

__all__ = ["KNOWN", "known_issue", "run_or_known"]

_REGRESSIONS = "tests/fuzz/test_fuzz_regressions.py"

#: Short description of each known bug, by its reproducer.
KNOWN = {
    f"{_REGRESSIONS}::test_line_splitter_keeps_lines_when_cr_lf_is_split_after_a_full_line":
        "LineSplitter with the two-byte terminator CR LF (ES920LR) drops a line of max_line bytes, and the line "
        "after an overflowing one, when a read ends between its CR and LF",
    f"{_REGRESSIONS}::test_es920lr_keeps_the_frame_after_overlong_noise_whose_cr_lf_is_split":
        "the same, seen from the ES920LR driver: a received frame is lost",
    f"{_REGRESSIONS}::test_rak3172_never_delivers_a_non_finite_snr":
        "RAK3172 RX event with SNR 'nan'/'inf'/'1e999' is delivered with a non-finite SNR (the reading JSON then "
        "holds NaN and the bridge dead-letters it)",
    f"{_REGRESSIONS}::test_serializer_refuses_integers_beyond_the_float_range":
        "Serializer.convert raises OverflowError on an integer too large for a float (rssi, snr, values)",
    f"{_REGRESSIONS}::test_serializer_refuses_unhashable_lane_or_kind":
        "Serializer.convert raises TypeError when lane or kind is a JSON list or object",
    f"{_REGRESSIONS}::test_serializer_lines_never_hold_a_line_break":
        "string fields (status agent, alert message) keep CR/LF, which line protocol cannot carry",
    f"{_REGRESSIONS}::test_config_error_for_a_control_character_gives_its_line":
        "a control character in a config gives a ConfigError with neither line nor key",
    f"{_REGRESSIONS}::test_radio_driver_that_is_a_list_is_a_config_error":
        "RadioConfig._default_section looks an unhashable driver (a list or mapping) up in a dict: TypeError",
    f"{_REGRESSIONS}::test_problem_in_a_merged_key_is_a_config_error_not_a_crash":
        "_position subscripts lc.key() of a key pulled in by a YAML merge (<<:), which is None: TypeError",
    f"{_REGRESSIONS}::test_a_file_name_too_long_is_a_config_error":
        "_check_readable_file: Path.exists() raises OSError ENAMETOOLONG for a path component over 255 bytes",
    f"{_REGRESSIONS}::test_a_frequency_beyond_the_float_range_is_a_config_error":
        "P2pConfig._japan_band formats value / 1e6 for its message: OverflowError for a 310-digit frequency_hz",
    f"{_REGRESSIONS}::test_yaml_aliases_do_not_expand_without_bound":
        "the config loader copies every alias while converting the YAML tree for pydantic: nested aliases ('billion "
        "laughs') make a 600-byte config take minutes and gigabytes",
    f"{_REGRESSIONS}::test_odd_yaml_is_a_config_error_not_a_crash":
        "YAML that ruamel's round-trip loader cannot build ('!!set' or an empty '!!float' on a scalar, '!!int r', a "
        "complex key, '|' after a comment) raises AttributeError, TypeError, IndexError, KeyError, ValueError or "
        "AssertionError instead of ConfigError",
}


def _test(name: str) -> str:
    test = f"{_REGRESSIONS}::{name}"
    assert test in KNOWN, test
    return test


def _frames(exc: BaseException) -> list[str]:
    return [f.filename for f in traceback.extract_tb(exc.__traceback__)]


def known_issue(target: str, data: Any, exc: BaseException) -> str | None:
    """The regression test documenting the bug behind this failure, or None for a new one.

    Args:
        target: the fuzz target's name.
        data: the input that failed.
        exc: what it raised (a Violation of the target's contract, or the crash).
    """
    message = str(exc)
    violation = isinstance(exc, Violation)
    if target == "splitter" and violation:
        profile, _, chunks = data
        if profile == "es920" and any(c.endswith(b"\r") for c in chunks):
            return _test("test_line_splitter_keeps_lines_when_cr_lf_is_split_after_a_full_line")
    if target == "es920lr" and violation and "read boundaries" in message:
        _, chunks = data
        if any(c.endswith(b"\r") for c in chunks[:-1]) and max(map(len, b"".join(chunks).split(b"\r\n"))) >= 1023:
            return _test("test_es920lr_keeps_the_frame_after_overlong_noise_whose_cr_lf_is_split")
    if target == "rak3172" and violation and "uplink SNR" in message and "finite" in message:
        return _test("test_rak3172_never_delivers_a_non_finite_snr")
    if target == "lineproto":
        if isinstance(exc, OverflowError) and any(f.endswith("lineproto.py") for f in _frames(exc)):
            return _test("test_serializer_refuses_integers_beyond_the_float_range")
        if isinstance(exc, TypeError) and "unhashable" in message:
            return _test("test_serializer_refuses_unhashable_lane_or_kind")
        if violation and "line break" in message:
            return _test("test_serializer_lines_never_hold_a_line_break")
    if target in ("config", "bridge_config", "config_aliases"):
        if violation and "no issue says where" in message and "unacceptable character" in message:
            return _test("test_config_error_for_a_control_character_gives_its_line")
        if type(exc).__name__ == "Hang" and "&" in data and "*" in data:
            return _test("test_yaml_aliases_do_not_expand_without_bound")
        names = [f.name for f in traceback.extract_tb(exc.__traceback__)]
        if isinstance(exc, OSError) and "_check_readable_file" in names:
            return _test("test_a_file_name_too_long_is_a_config_error")
        if isinstance(exc, OverflowError) and "_japan_band" in names:
            return _test("test_a_frequency_beyond_the_float_range_is_a_config_error")
        if isinstance(exc, TypeError) and "_default_section" in names:
            return _test("test_radio_driver_that_is_a_list_is_a_config_error")
        if isinstance(exc, TypeError) and "_position" in names:
            return _test("test_problem_in_a_merged_key_is_a_config_error_not_a_crash")
        if not violation and any("/ruamel/" in f for f in _frames(exc)):
            return _test("test_odd_yaml_is_a_config_error_not_a_crash")
    return None


def run_or_known(target: Target, data: Any) -> Outcome | None:
    """Run one input through its target's oracle (for the quick hypothesis tests).

    Returns:
        The outcome, or None when the input hit a known bug (its strict-xfail reproducer keeps it visible).

    Raises:
        Violation, or the crash itself, for anything that is not a known bug.
    """
    try:
        return run_one(target, data)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a documented, known bug
        if known_issue(target.name, data, exc) is None:
            raise
        return None
