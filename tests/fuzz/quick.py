"""The two property tests every fuzz target gets in the default suite, for a test module to take over its targets.

hypothesis draws the random generator each input is made from, so a failure is shrunk and replayed from hypothesis'
database (each parametrized case under its own key). The generators and oracles are the dedicated run's
(:mod:`tests.fuzz.targets`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.known import run_or_known
from tests.fuzz.targets import ACCEPTED, TARGETS, run_one

__all__ = ["examples", "mutated_inputs_test", "valid_inputs_test"]


def examples(count: int) -> settings:
    """hypothesis settings for ``count`` inputs a test, without a deadline (the machine is shared and loaded)."""
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mutated_inputs_test(*names: str, count: int) -> Callable[..., None]:
    """A test of ``count`` inputs per target: mostly mutated valid inputs, some valid, some random, each through
    the target's oracle; a crash or a breach of the target's contract fails (a known bug passes, see
    :mod:`tests.fuzz.known`)."""

    @examples(count)
    @pytest.mark.parametrize("name", names)
    @given(rng=st.randoms(use_true_random=False))
    def test(name: str, rng: random.Random) -> None:
        target = TARGETS[name]
        run_or_known(target, target.generate(rng))

    return test


def valid_inputs_test(*names: str, count: int) -> Callable[..., None]:
    """A test of ``count`` valid inputs per target, which each target must accept."""

    @examples(count)
    @pytest.mark.parametrize("name", names)
    @given(rng=st.randoms(use_true_random=False))
    def test(name: str, rng: random.Random) -> None:
        target = TARGETS[name]
        assert run_one(target, target.valid(rng)) == ACCEPTED

    return test
