"""Cayenne LPP vectors of independent public implementations through denen's decoder.

tests/unit/lpp_vectors.json holds each vector with the repository, commit and file it comes from, what that source
expects, and, where denen decodes something else, what denen decodes and why the format's definition is on its side.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from drivers.codec import lpp
from drivers.errors import LppError

DATA = json.loads(Path(__file__).with_name("lpp_vectors.json").read_text(encoding="utf-8"))
VECTORS: list[dict] = DATA["vectors"]
# Sources that are not another decoder: the format's own documentation, and The Things Stack, which decodes with
# go-cayenne-lib.
NOT_IMPLEMENTATIONS = {"mydevices-docs", "lorawan-stack"}


def _steps(name: str, value: object) -> list[float]:
    """One step of each field of a type (an encoder truncates or rounds by up to that much)."""
    if name == "polyline":
        return [lpp.POLYLINE_PRECISIONS[value["precision"]] / 10_000] * 2  # type: ignore[index]
    return [field.step for field in lpp.lpp_type(name).fields]


def _numbers(name: str, value: object) -> list[float]:
    if isinstance(value, lpp.Polyline):
        return [coordinate for point in value.points for coordinate in point]
    if name == "polyline":
        return [coordinate for point in value["points"] for coordinate in point]  # type: ignore[index]
    return list(value) if isinstance(value, (list, tuple)) else [value]  # type: ignore[list-item]


def _mismatch(body: bytes, expect: object, kind: str, tolerance: float) -> str | None:
    """Why decoding ``body`` does not give ``expect`` (None when it does)."""
    try:
        records = lpp.decode(body)
    except LppError as exc:
        return None if expect == "error" else f"refused: {exc.reason}: {exc}"
    if expect == "error":
        return f"accepted as {records}"
    assert isinstance(expect, list)
    got = [(r.channel, r.name) for r in records]
    if got != [(channel, name) for channel, name, _ in expect]:
        return f"records {got}"
    for record, (_, name, value) in zip(records, expect, strict=True):
        if value is None:
            continue  # the source asserts only that the record is there
        if name == "polyline" and record.value.precision != value["precision"]:  # type: ignore[union-attr]
            return f"polyline precision {record.value.precision}"  # type: ignore[union-attr]
        actual, wanted = _numbers(name, record.value), _numbers(name, value)
        if len(actual) != len(wanted):
            return f"{name}: {len(actual)} numbers, {len(wanted)} expected"
        steps = _steps(name, value) * (len(wanted) // len(_steps(name, value)))
        for a, w, step in zip(actual, wanted, steps, strict=True):
            slack = step + 1e-9 * max(1.0, abs(w)) if kind == "encoder" else tolerance * max(1.0, abs(w))
            if abs(a - w) > slack:
                return f"{name}: {a!r} where {w!r} was expected"
    return None


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['source']}:{v['test'][:60]}" for v in VECTORS])
def test_vector(vector: dict) -> None:
    body = bytes.fromhex(vector["hex"])
    tolerance = vector.get("tolerance", 1e-9)
    if "denen" not in vector:
        assert _mismatch(body, vector["expect"], vector["kind"], tolerance) is None, vector
        return
    # A documented disagreement: denen decodes what "denen" says, exactly, and the source's expectation is really
    # not what denen gives (otherwise the note would be stale).
    assert vector["why"].strip()
    assert _mismatch(body, vector["denen"], "decoder", 1e-9) is None, vector
    assert _mismatch(body, vector["expect"], vector["kind"], tolerance) is not None, vector


def test_every_vector_names_a_listed_source_and_file() -> None:
    for vector in VECTORS:
        source = DATA["sources"][vector["source"]]
        assert len(source["commit"]) == 40 and source["repo"].count("/") == 1 and source["licence"]
        assert vector["path"] and vector["test"] and vector["kind"] in {"decoder", "encoder", "run", "library"}


def test_the_set_spans_nine_implementations_and_every_type() -> None:
    implementations = {v["source"] for v in VECTORS} - NOT_IMPLEMENTATIONS
    assert len(implementations) == 9
    names = {name for v in VECTORS if isinstance(v["expect"], list) for _, name, _ in v["expect"]}
    assert names >= {lpp.LPP_TYPES[type_id].name for type_id in lpp.LPP_TYPES if type_id != 255} | {"polyline"}


def test_the_disagreements_are_the_documented_ones() -> None:
    """Counted here so that a change in denen's decoder that adds or removes one shows up in review."""
    disagreements = Counter(v["source"] for v in VECTORS if "denen" in v)
    assert disagreements == {"electroniccats": 2, "cayenne_lpp-elixir": 3, "cayennelpp_decoder-cpp": 3}
    assert len(VECTORS) == 117
