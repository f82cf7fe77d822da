"""The README's written contracts (topics, payload schema), extracted for tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    nxt = re.search(r"\n#{2,3} ", text[start + len(title):])
    return text[start: start + len(title) + (nxt.start() if nxt else len(text))]


def readings_schema() -> dict:
    block = re.search(r"```json\n(.*?)```", section("### Reading batch schema"), re.S)
    assert block, "README has no JSON Schema block under 'Reading batch schema'"
    return json.loads(block.group(1))
